"""The pipeline stages: order kept, work in flight bounded, worker errors raised in the caller."""

from __future__ import annotations

import random
import threading
import time

import pytest

from isnet.runtime.pipeline import OrderedSink, ordered_map


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

    for value in ordered_map(work, range(40), threads=4, depth=5):
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
        for value in ordered_map(work, range(1000), threads=2, depth=4):
            results.append(value)
    assert results == [0, 1, 2]
    assert len(started) < 20


def test_sink_completes_in_order_and_raises_worker_errors():
    done = []
    with OrderedSink(threads=3, depth=4, on_done=done.append) as sink:
        for i in range(20):
            sink.submit(lambda i: (time.sleep(random.Random(i).uniform(0, 0.003)), i)[1], i)
    assert done == list(range(20))

    def fail(i):
        if i == 2:
            raise OSError("disk full")
        return i

    with pytest.raises(OSError, match="disk full"):
        with OrderedSink(threads=2, depth=3) as sink:
            for i in range(50):
                sink.submit(fail, i)


class _Doubler:
    def __init__(self):
        self.calls = []

    def predict(self, batch):
        self.calls.append(batch.shape)
        return batch[:, :1] * 2


def test_predict_batches_keeps_order_and_runs_mixed_shapes_alone():
    import numpy as np

    from isnet.runtime.pipeline import predict_batches

    items = [np.full((3, 2, 2), i, np.float32) for i in range(5)] + [np.full((3, 4, 4), 9, np.float32)]
    model = _Doubler()
    results = list(predict_batches(model, items, 2, lambda item: item))
    assert [item is got for item, (got, _) in zip(items, results)] == [True] * 6
    assert [float(out[0, 0, 0]) for _, out in results] == [0, 2, 4, 6, 8, 18]
    # Two full batches of 2x2 inputs, then the last batch mixes sizes: one call per item.
    assert model.calls == [(2, 3, 2, 2), (2, 3, 2, 2), (1, 3, 2, 2), (1, 3, 4, 4)]
