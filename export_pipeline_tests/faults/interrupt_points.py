"""Interrupt points inside a child `dagster` process, for test_cancel_commit.py.

The test runs the real CLI (`python -m dagster asset materialize ...`) with a `sitecustomize`
on its PYTHONPATH that calls `install()` here. EXPORT_TEST_INTERRUPT_AT names one point,
EXPORT_TEST_INTERRUPT_DIR a folder. The first time the child reaches the point it writes
`<dir>/reached` (the point and the thread it was reached on) and then:
- on the step's thread (the main thread, where Dagster raises a cancel): it waits to be
  interrupted; the test sends SIGTERM once it sees `reached`, so the cancel is raised exactly
  there;
- on any other thread (a commit thread): it waits until the main thread is handling the
  interrupt, then goes on, so the cancel lands exactly while that thread is at the point.
Nothing of the project or of botocore is replaced: the points are botocore's own event hooks
(registered on every client the child makes), and thin wrappers that call the real function
(`os.replace`, `threading.Thread.start`, `materialization_metadata`) and then wait. Every wait
has a deadline: a child that is never interrupted fails with a message naming the point.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

POINT = "EXPORT_TEST_INTERRUPT_AT"
FOLDER = "EXPORT_TEST_INTERRUPT_DIR"
REACHED = "reached"
DEADLINE_SECONDS = 60.0

# botocore events: point -> (event name, on which call of it the point is)
BOTOCORE_POINTS = {
    # the withdrawal of the batch's manifests (step thread, before any export)
    "withdraw": "before-call.s3.DeleteObjects",
    # S3 has opened the multipart upload, its id is not back yet (step thread, streaming)
    "after-create": "after-call.s3.CreateMultipartUpload",
    # the commit of a multipart upload (a commit thread): just before, just after S3 answered
    "before-complete": "before-call.s3.CompleteMultipartUpload",
    "after-complete": "after-call.s3.CompleteMultipartUpload",
    # the step signs the delivered object's download link (a presigned GET, no request)
    "link": "before-parameter-build.s3.GetObject",
}
# the other points
METADATA = "metadata"  # the step thread builds a delivered partition's metadata
COMMIT_THREAD_START = "commit-thread-start"  # the step thread starts the first commit thread
AFTER_RENAME = "after-rename"  # a commit thread has renamed a local file into place
POINTS = (*BOTOCORE_POINTS, METADATA, COMMIT_THREAD_START, AFTER_RENAME)
STORAGE_CODE = os.path.join("export_pipeline", "storage", "")  # where objects are committed


class _Point:
    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self._fired = False
        self._lock = threading.Lock()

    def reach(self) -> None:
        """The first call: say so, then wait (module docstring). Later calls: nothing."""
        with self._lock:
            if self._fired:
                return
            self._fired = True
        thread = threading.current_thread()
        (self.folder / REACHED).write_text(f"{self.name} {thread.name}\n")
        if thread is threading.main_thread():
            # Interruptible: the signal handler runs here and raises out of this frame.
            threading.Event().wait(DEADLINE_SECONDS)
            raise RuntimeError(f"interrupt point {self.name}: never interrupted")
        deadline = threading.Event()
        for _ in range(int(DEADLINE_SECONDS / 0.01)):
            if _main_thread_interrupted():
                return
            deadline.wait(0.01)  # polling a condition, with a deadline
        raise RuntimeError(f"interrupt point {self.name}: the step was never interrupted")


def _main_thread_interrupted() -> bool:
    """The main thread is handling an interrupt (a KeyboardInterrupt, Dagster's
    DagsterExecutionInterruptedError: a BaseException that is no Exception)."""
    current = sys._current_exceptions().get(threading.main_thread().ident or 0)
    error = current[1] if isinstance(current, tuple) else current  # 3.11: exc_info
    return error is not None and not isinstance(error, Exception)


def install() -> None:
    """Install the point EXPORT_TEST_INTERRUPT_AT names (called by the child's
    sitecustomize); nothing when it is unset."""
    name = os.environ.get(POINT, "")
    if not name:
        return
    if name not in POINTS:
        raise ValueError(f"{POINT}={name!r}: not one of {', '.join(POINTS)}")
    point = _Point(name, Path(os.environ[FOLDER]))
    if name in BOTOCORE_POINTS:
        _on_botocore_event(BOTOCORE_POINTS[name], point)
    elif name == METADATA:
        _after_metadata(point)
    elif name == COMMIT_THREAD_START:
        _after_commit_thread_start(point)
    else:
        _after_rename(point)


def _on_botocore_event(event: str, point: _Point) -> None:
    import botocore.session

    create_client = botocore.session.Session.create_client

    def with_point(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        client = create_client(self, *args, **kwargs)
        client.meta.events.register(event, lambda **_: point.reach(), unique_id=point.name)
        return client

    botocore.session.Session.create_client = with_point


def _after_metadata(point: _Point) -> None:
    import export_pipeline.io_managers.exports as exports

    build: Callable[..., dict[str, Any]] = exports.materialization_metadata

    def built_then_point(*args: Any, **kwargs: Any) -> dict[str, Any]:
        metadata = build(*args, **kwargs)
        point.reach()
        return metadata

    exports.materialization_metadata = built_then_point


def _after_commit_thread_start(point: _Point) -> None:
    """The step's thread starts the first commit thread (inside the pool's `submit`, which has
    queued the commit): once that thread is committing (in the storage code), the point."""
    start = threading.Thread.start

    def started_then_point(self: threading.Thread) -> None:
        start(self)
        if self.name.startswith("export-commit"):
            committing = threading.Event()
            for _ in range(int(DEADLINE_SECONDS / 0.01)):
                frame = sys._current_frames().get(self.ident or 0)
                while frame is not None and STORAGE_CODE not in frame.f_code.co_filename:
                    frame = frame.f_back
                if frame is not None:
                    break
                committing.wait(0.01)  # polling a condition, with a deadline
            point.reach()

    threading.Thread.start = started_then_point  # type: ignore[method-assign]


def _after_rename(point: _Point) -> None:
    replace = os.replace

    def renamed_then_point(src: Any, dst: Any, **kwargs: Any) -> None:
        replace(src, dst, **kwargs)
        if str(src).endswith(".partial"):  # an export writer's temporary file
            point.reach()

    os.replace = renamed_then_point
