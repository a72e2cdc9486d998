"""deploy/Dockerfile's build steps, replayed without docker (no daemon runs on this machine).

The steps are read from the Dockerfile itself, so the test follows it when it changes:
- the base image, the non-root user, the constraints the install uses;
- every COPY source exists and is not excluded by .dockerignore;
- the files the build stage COPYs are enough to build the package: they are copied into a
  fresh folder (symlinks kept, as COPY keeps them), and a wheel is built there;
- the wheel works without a checkout: unpacked into a folder of its own (what installing a pure
  wheel does) and imported from a directory outside the repository, its default spec and
  instance config are the packaged copies and the definitions load;
- the image's CMD, the code location server, starts from that install and answers a gRPC
  health check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from export_pipeline_tests.dagster_processes import (
    BIN,
    RUN_ENV,
    free_port,
    port_open,
    stop_group,
    wait_for,
)
from export_pipeline_tests.deploy.dockerfile import (
    Instruction,
    copy_sources,
    dockerignore,
    ignored,
    instructions,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
NON_ROOT_UID = 10001
BUILD_DEADLINE_SECONDS = 300
SERVER_DEADLINE_SECONDS = 120


def steps() -> list[Instruction]:
    return instructions(DOCKERFILE)


def build_stage_copies() -> list[Instruction]:
    """The COPYs before the package install (the RUN with `pip install`)."""
    result: list[Instruction] = []
    for step in steps():
        if step.keyword == "RUN" and "pip install" in step.args:
            return result
        if step.keyword == "COPY":
            result.append(step)
    raise AssertionError("the Dockerfile has no RUN with pip install")


def test_base_image_user_and_install_command() -> None:
    all_steps = steps()
    assert all_steps[0].keyword == "FROM" and all_steps[0].args == "python:3.11-slim"
    users = [s.args for s in all_steps if s.keyword == "USER"]
    assert users == [str(NON_ROOT_UID)], "the image must end as the non-root user"
    (install,) = [s for s in all_steps if s.keyword == "RUN" and "pip install" in s.args]
    words = install.words()
    assert words[words.index("-c") + 1] == "constraints.txt"
    assert "." in words and "-e" not in words, "install the package itself, not editable"
    env = " ".join(s.args for s in all_steps if s.keyword == "ENV")
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in env
    # Runs (ECS tasks, Kubernetes pods) use this image: a ranged run writes its events in
    # batches (the end-to-end tests' services run with the same value, dagster_processes.RUN_ENV).
    assert f"DAGSTER_EVENT_BATCH_SIZE={RUN_ENV['DAGSTER_EVENT_BATCH_SIZE']}" in env


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    patterns = dockerignore(REPO_ROOT / ".dockerignore")
    copies = [s for s in steps() if s.keyword == "COPY"]
    assert copies
    for step in copies:
        sources, _ = copy_sources(step)
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # The context leaves out what the image never needs.
    for path in (".venv", ".git", ".local", "export_pipeline_tests/conftest.py"):
        assert ignored(path, patterns), path


def test_baked_instance_config_is_the_ecs_one() -> None:
    copies = [copy_sources(s) for s in steps() if s.keyword == "COPY"]
    assert (["deploy/ecs/dagster.yaml"], "/opt/dagster/dagster_home/dagster.yaml") in copies
    assert (["deploy/ecs/workspace.yaml"], "/opt/dagster/app/workspace.yaml") in copies


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from exactly what the Dockerfile's build stage copies."""
    context = tmp_path_factory.mktemp("build")
    for step in build_stage_copies():
        sources, destination = copy_sources(step)
        for source in sources:
            target = context / destination if destination != "./" else context
            if destination.endswith("/") or len(sources) > 1:
                target = target / Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            origin = REPO_ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, target)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=BUILD_DEADLINE_SECONDS,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("export_pipeline-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked into a site folder of its own (a pure wheel installs by unpacking)."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def outside_checkout_env(site: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))}
    env.update(PYTHONPATH=str(site), EXPORT_STORAGE_DIR=str(tmp / "exports"))
    env["DAGSTER_HOME"] = str(tmp / "dagster_home")
    (tmp / "dagster_home").mkdir(exist_ok=True)
    return env


@pytest.mark.slow  # builds the wheel (pip, a subprocess)
def test_wheel_ships_the_defaults_as_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        spec = archive.read("export_pipeline/defaults/exports.yaml")
        instance = archive.read("export_pipeline/defaults/dagster.yaml")
        metadata = Parser().parsestr(
            archive.read("export_pipeline-0.1.0.dist-info/METADATA").decode()
        )
    assert spec == (REPO_ROOT / "exports.yaml").read_bytes()
    assert instance == (REPO_ROOT / "deploy" / "dagster.yaml").read_bytes()
    assert "export_pipeline/demo/schema.sql" in names
    assert not any(n.startswith("export_pipeline_tests/") for n in names)
    # Every runtime requirement is pinned, and to the version constraints.txt installs.
    pins = dict(
        line.split("==")
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    runtime = [
        Requirement(r) for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r
    ]
    assert runtime
    for requirement in runtime:
        (specifier,) = requirement.specifier
        assert specifier.operator == "=="
        assert pins[requirement.name.lower().replace("_", "-")] == specifier.version, requirement


LOAD_OUTSIDE_CHECKOUT = """
import json, sys
from pathlib import Path
import dagster as dg
import export_pipeline
from export_pipeline import localdev, settings
from export_pipeline.definitions import defs

with dg.instance_for_test():
    definitions = defs()
    keys = sorted("/".join(a.key.path) for a in definitions.resolve_asset_graph().assets_defs
                  if len(a.keys) == 1)
    jobs = sorted(j.name for j in definitions.resolve_all_job_defs())
json.dump({
    "package": export_pipeline.__file__,
    "spec": str(settings.spec_path()),
    "spec_is_link": settings.DEFAULT_SPEC.is_symlink(),
    "instance_config": str(localdev.INSTANCE_CONFIG),
    "local_dir": str(localdev.LOCAL_DIR),
    "assets": keys,
    "jobs": jobs,
}, sys.stdout)
"""


@pytest.mark.slow
def test_installed_wheel_loads_without_a_checkout(installed: Path, tmp_path: Path) -> None:
    env = outside_checkout_env(installed, tmp_path)
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_OUTSIDE_CHECKOUT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    result = json.loads(loaded.stdout)
    package = installed / "export_pipeline"
    assert result["package"] == str(package / "__init__.py")
    assert result["spec"] == str(package / "defaults" / "exports.yaml")
    assert result["spec_is_link"] is False
    assert result["instance_config"] == str(package / "defaults" / "dagster.yaml")
    assert result["local_dir"] == str(tmp_path / ".local")
    assert result["assets"] == [
        "exports/events",
        "exports/invoices",
        "exports/orders",
        "exports_manifest",
    ]
    assert "exports_job" in result["jobs"]
    assert "monthly_exports_job" not in result["jobs"]  # gone: every path runs the assets


@pytest.fixture
def code_server(installed: Path, tmp_path: Path) -> Iterator[int]:
    """The image's CMD, run from the unpacked wheel outside the checkout, on a free port."""
    (cmd,) = [s for s in steps() if s.keyword == "CMD"]
    args = cmd.words()
    assert args[:3] == ["dagster", "code-server", "start"]
    assert args[args.index("-m") + 1] == "export_pipeline.definitions"
    port = free_port()
    args[args.index("-h") + 1] = "127.0.0.1"
    args[args.index("-p") + 1] = str(port)
    args[0] = str(BIN / "dagster")
    log = tmp_path / "code-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=outside_checkout_env(installed, tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield port
    finally:
        stop_group(proc)
        sys.stderr.write(log.read_text(errors="replace")[-3000:])


@pytest.mark.slow
def test_image_command_serves_the_code_location(code_server: int) -> None:
    # The port answers first (cheap to poll); then the health check, a process each time.
    wait_for(
        "the code server's port", SERVER_DEADLINE_SECONDS, lambda: port_open(code_server, None)
    )

    def healthy() -> bool | None:
        probe = subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(code_server)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return True if probe.returncode == 0 else None

    wait_for("the code server's health check", SERVER_DEADLINE_SECONDS, healthy)
