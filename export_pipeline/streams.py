"""Read ahead on a background thread, so decoding the next batch overlaps encoding this one.

For Parquet, the ADBC driver decodes COPY BINARY in C++ and pyarrow encodes and compresses in
C++, both without the GIL: on two cores they run at the same time. The queue is bounded, so
memory stays at `depth + 1` items.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1  # how often a blocked put re-checks whether the other side gave up


def prefetch(source: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
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
