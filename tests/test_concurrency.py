"""The concurrency helpers: the ordered codec pool and the budgeted prefetcher."""

from __future__ import annotations

import threading
import time

import pytest

from pureebm.concurrency import CODEC_THREADS, ordered_map, prefetched
from pureebm.images import UnsupportedInput


def test_the_codec_pool_keeps_order_bounds_its_lookahead_and_raises_in_place():
    consumed = 0
    in_flight_max = 0
    lock = threading.Lock()
    running = 0

    def slow_square(n: int) -> int:
        nonlocal running, in_flight_max
        with lock:
            running += 1
            in_flight_max = max(in_flight_max, running)
        time.sleep(0.01 * (n % 3))  # later items often finish first
        with lock:
            running -= 1
        if n == 7:
            raise UnsupportedInput("item 7 is broken")
        return n * n

    def items():
        nonlocal consumed
        for n in range(20):
            consumed += 1
            yield n

    results = ordered_map(slow_square, items())
    assert [next(results) for _ in range(7)] == [n * n for n in range(7)]
    assert consumed <= 7 + 2 * CODEC_THREADS  # never read far ahead of the caller
    assert in_flight_max <= CODEC_THREADS
    with pytest.raises(UnsupportedInput, match="item 7"):
        next(results)


def test_small_items_run_inline_and_keep_their_place() -> None:
    threads: list[str] = []

    def record(n: int) -> int:
        threads.append(threading.current_thread().name)
        if n == 3:
            raise UnsupportedInput("item 3 is broken")
        return -n

    sizes = [1 << 20, 1, 1 << 20, 1, 1]  # large items go to the pool, small ones stay
    results = ordered_map(record, range(5), size=lambda n: sizes[n])
    assert [next(results) for _ in range(3)] == [0, -1, -2]
    with pytest.raises(UnsupportedInput, match="item 3"):
        next(results)
    assert threads.count(threading.current_thread().name) >= 2  # items 1 and 3 at least
    assert any(name != threading.current_thread().name for name in threads)


def test_prefetching_keeps_order_reads_boundedly_ahead_and_stops_when_closed():
    produced: list[int] = []
    closed = threading.Event()

    def source():
        try:
            for n in range(100):
                produced.append(n)
                if n == 50:
                    raise ValueError("item 50 is broken")
                yield n
        finally:
            closed.set()

    ahead = prefetched(source(), budget=4, cost=lambda n: 1)
    assert [next(ahead) for _ in range(10)] == list(range(10))
    time.sleep(0.2)
    assert len(produced) <= 10 + 4 + 2  # the queue, the item being handed over, one more
    assert threading.current_thread().name != "prefetch"
    ahead.close()
    assert closed.wait(5)
    assert not any(t.name == "prefetch" for t in threading.enumerate())

    failing = prefetched(source(), budget=4, cost=lambda n: 1)
    assert [next(failing) for _ in range(50)] == list(range(50))
    with pytest.raises(ValueError, match="item 50"):
        next(failing)

    produced.clear()
    large = prefetched(source(), budget=10, cost=lambda n: 100)  # each item over the budget
    assert [next(large) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    assert len(produced) <= 3 + 2  # one waiting to be taken, one being produced
    large.close()
