"""Holding interrupts across a few lines that must not be cut in two (no Dagster here).

A cancelled Dagster run gets SIGTERM (SIGINT for a Ctrl-C), which Dagster turns into an
exception raised wherever the step's thread happens to be. Where a published object is being
recorded, that would leave it published and unrecorded; `deferred_interrupts` holds the
signals until the block ends and then delivers them to the handlers that were there before.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them. Python runs signal
    handlers in the main thread only, so elsewhere nothing can interrupt the block and this is
    a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
