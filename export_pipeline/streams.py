"""Read ahead on a background thread, so decoding the next batch overlaps encoding this one.

For Parquet, the ADBC driver decodes COPY BINARY in C++ and pyarrow encodes and compresses in
C++, both without the GIL: on two cores they run at the same time. The queue is bounded, so
memory stays at `depth + 1` items.

Stopping early (an error downstream, a run cancelled with SIGTERM): the producer may be blocked
in C, waiting for the database, for as long as `statement_timeout`. `on_stop` (for ADBC, the
statement's cancel) is called before the thread is joined, so the join takes as long as the
cancel, not as long as the query. The consumer waits in short polls, so a signal handler (or
Dagster's interrupt, which only flags the main thread) runs within `_POLL_SECONDS`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.1  # how often a blocked put or get re-checks whether to give up
_CANCEL_RETRY_SECONDS = 0.5  # how often `on_stop` is repeated while the producer is blocked


def prefetch(
    source: Iterable[T], depth: int = 2, on_stop: Callable[[], None] | None = None
) -> Generator[T, None, None]:
    """Iterate `source` on a background thread, up to `depth` items ahead of the consumer.

    Exceptions from `source` are re-raised in the consumer. If the consumer stops early, the
    producer stops after its current item; `on_stop` is called first if the producer is still
    running, to interrupt a blocking read. Memory: `depth + 1` items.
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
    ended = False  # the producer said it is done (end or error): nothing to interrupt
    try:
        while True:
            try:
                kind, value = items.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            ended = kind != "item"
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        if on_stop is None or ended:
            thread.join()
        else:
            # A cancel that reaches the server before the producer's query does is lost, so
            # cancel again for as long as the producer is still blocked.
            while thread.is_alive():
                try:
                    on_stop()
                except Exception as exc:  # the producer may have finished meanwhile
                    logger.debug("prefetch: on_stop failed: %s", exc)
                thread.join(timeout=_CANCEL_RETRY_SECONDS)
