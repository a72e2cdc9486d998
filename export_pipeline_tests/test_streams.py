from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from export_pipeline.streams import prefetch


def test_prefetch_yields_everything_in_order() -> None:
    assert list(prefetch(iter(range(100)), depth=2)) == list(range(100))


def test_prefetch_reraises_the_producers_error_after_its_items() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("source broke")

    got: list[int] = []
    with pytest.raises(ValueError, match="source broke"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_stops_the_producer_when_the_consumer_stops() -> None:
    produced: list[int] = []
    finished = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            finished.set()

    stream = prefetch(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # joins the producer thread
    assert len(produced) <= 4  # depth + the one in hand + the one consumed
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_prefetch_interrupts_a_blocked_producer_before_joining() -> None:
    """A producer blocked in a read (ADBC waiting for the server) is woken by `on_stop`, so
    closing the stream does not wait for the read to finish on its own."""
    unblocked = threading.Event()
    stops: list[str] = []

    def blocking() -> Iterator[int]:
        yield 1
        assert unblocked.wait(60), "never interrupted"
        raise OSError("canceling statement due to user request")

    def cancel() -> None:
        stops.append("cancel")
        unblocked.set()

    stream = prefetch(blocking(), depth=1, on_stop=cancel)
    assert next(stream) == 1
    stream.close()
    assert stops and set(stops) == {"cancel"}
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_prefetch_repeats_a_cancel_that_was_lost() -> None:
    """The first cancel reaches the server before the producer's query does (nothing to
    cancel yet): closing the stream repeats it until the producer stops."""
    unblocked = threading.Event()
    stops: list[int] = []

    def blocking() -> Iterator[int]:
        yield 1
        assert unblocked.wait(60), "never interrupted"
        raise OSError("canceling statement due to user request")

    def cancel() -> None:
        stops.append(len(stops))
        if len(stops) >= 2:  # the first one is lost
            unblocked.set()

    stream = prefetch(blocking(), depth=1, on_stop=cancel)
    assert next(stream) == 1
    stream.close()
    assert len(stops) >= 2
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_prefetch_does_not_interrupt_a_finished_producer() -> None:
    stops: list[str] = []
    assert list(prefetch(iter([1, 2]), on_stop=lambda: stops.append("x"))) == [1, 2]
    with pytest.raises(ValueError, match="broke"):
        list(prefetch(_failing(), on_stop=lambda: stops.append("x")))
    assert stops == []


def _failing() -> Iterator[int]:
    yield 1
    raise ValueError("broke")
