"""The pipeline stages: order kept, work in flight bounded, worker errors raised in the caller."""

from __future__ import annotations

import random
import threading
import time

import pytest

from runtime.pipeline import OrderedSink, ordered_map


def test_ordered_map_keeps_order_and_bounds_work_in_flight():
    started, consumed = [], []
    lock = threading.Lock()
    ahead = []

    def work(i):
        with lock:
            started.append(i)
            ahead.append(len(started) - len(consumed))
        time.sleep(random.Random(i).uniform(0, 0.004))  # later items often finish first
        return i * i

    for value in ordered_map(work, range(40), workers=4, depth=5):
        consumed.append(value)
    assert consumed == [i * i for i in range(40)]
    assert max(ahead) <= 5


def test_ordered_map_raises_a_worker_error_and_cancels_the_rest():
    started = []

    def work(i):
        started.append(i)
        if i == 3:
            raise KeyError("bad item")
        time.sleep(0.002)
        return i

    results = []
    with pytest.raises(KeyError, match="bad item"):
        for value in ordered_map(work, range(1000), workers=2, depth=4):
            results.append(value)
    assert results == [0, 1, 2]
    assert len(started) < 20


def test_sink_completes_in_order_and_raises_worker_errors():
    done = []
    with OrderedSink(workers=3, depth=4, on_done=done.append) as sink:
        for i in range(20):
            sink.submit(lambda i: (time.sleep(random.Random(i).uniform(0, 0.003)), i)[1], i)
    assert done == list(range(20))

    def fail(i):
        if i == 2:
            raise OSError("disk full")
        return i

    with pytest.raises(OSError, match="disk full"):
        with OrderedSink(workers=2, depth=3) as sink:
            for i in range(50):
                sink.submit(fail, i)
