"""A small reader for deploy/Dockerfile and .dockerignore, enough to replay the image's build
steps without docker: instructions with their arguments, ARG defaults substituted."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def words(self) -> list[str]:
        """The arguments split as a shell would (JSON form for exec-style instructions)."""
        text = self.args.strip()
        if text.startswith("["):
            words: list[str] = json.loads(text)
            return words
        return shlex.split(text)


def instructions(dockerfile: Path) -> list[Instruction]:
    """The instructions in order; comments dropped, continuation lines joined, ARGs expanded."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    result = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        result.append(Instruction(keyword, rest.strip()))
    return result


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """A COPY's sources and destination (flags such as --chown dropped)."""
    words = [w for w in instruction.words() if not w.startswith("--")]
    return words[:-1], words[-1]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` exclude `path` (or a folder it is in); `!` re-includes."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*/", "(.*/)?")
        if any(re.fullmatch(regex, c) or fnmatch.fnmatch(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
