"""Two small threads that let reading the database overlap with encoding and writing.

PostgreSQL sends rows on one core; on a 2-core machine the other core must do everything
else (Parquet encoding, compression, hashing, upload) at the same time, or the export takes
the sum of both. Both helpers use bounded queues, so memory stays at `depth` items.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1  # how often a blocked put re-checks whether the other side gave up


def prefetch(source: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `source` on a background thread, up to `depth` items ahead of the consumer.

    Exceptions from `source` are re-raised in the consumer. If the consumer stops early, the
    producer stops after its current item. Memory: `depth + 1` items.
    """
    items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                items.put((kind, value), timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as exc:
            put("error", exc)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class BackgroundConsumer(Generic[T]):
    """Calls `consume(item)` on a worker thread, in order; `put` blocks when `depth` wait.

    `close()` waits for the queue to drain and re-raises the worker's error, if any. Leaving
    the `with` block on an exception cancels: queued items are dropped. Memory: `depth` items.
    """

    _END = object()

    def __init__(self, consume: Callable[[T], None], depth: int = 4, name: str = "writer"):
        self._consume = consume
        self._items: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is self._END or self._cancelled.is_set():
                return
            try:
                self._consume(item)  # type: ignore[arg-type]
            except BaseException as exc:
                self._error = exc
                return

    def put(self, item: T) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                raise RuntimeError("background writer stopped")
            try:
                self._items.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until every item was consumed; raise the worker's error if there was one."""
        if self._thread.is_alive() and self._error is None:
            self.put(self._END)  # type: ignore[arg-type]
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._cancelled.set()
        while True:  # unblock the worker and drop what is queued
            try:
                self._items.get_nowait()
            except queue.Empty:
                break
        try:
            self._items.put_nowait(self._END)
        except queue.Full:
            pass
        self._thread.join()

    def __enter__(self) -> BackgroundConsumer[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.cancel()
        else:
            self.close()
