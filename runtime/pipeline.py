"""Bounded, ordered worker stages around an inference loop running in the caller's thread.

:func:`ordered_map` runs a loading function on worker threads ahead of the consumer and yields
results in input order; :func:`predict_batches` groups the loaded items into batches for the
model; :class:`OrderedSink` runs a saving function on worker threads behind it.
Both keep at most ``depth`` items in flight, so memory stays flat whatever the folder size, and
both re-raise a worker's exception in the caller's thread at the next step, after cancelling
pending work: an error never stays in a worker.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def default_io_threads() -> int:
    """Decode/pre-process and post-process/save threads: one per core, at most 4 (inference takes its own)."""
    return max(1, min(4, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, depth: int) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in order, computed by ``threads`` threads up to ``depth`` ahead.

    An exception raised by ``fn`` is re-raised here when its result is due; pending work is
    cancelled when the consumer stops early or fails.
    """
    if threads < 1 or depth < 1:
        raise ValueError("threads and depth must be >= 1")
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="isnet-load")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Predictor(Protocol):
    """What :func:`predict_batches` runs: ``predict(N x 3 x H x W) -> N x 1 x H x W`` (a LoadedModel)."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        ...


def predict_batches(model: Predictor, items: Iterable[T], batch: int,
                    tensor: Callable[[T], np.ndarray]) -> Iterator[tuple[T, np.ndarray]]:
    """Yield ``(item, output map)`` for every item, in order, running ``batch`` items per model call.

    ``tensor(item)`` is the item's CHW input. Items whose inputs differ in shape (a pre-processing
    without a fixed Resize keeps each image's size) cannot share a call; such a batch runs one
    item at a time.
    """
    for chunk in batches(items, batch):
        inputs = [tensor(item) for item in chunk]
        if len({array.shape for array in inputs}) == 1:
            yield from zip(chunk, model.predict(np.stack(inputs)))
            continue
        for item, array in zip(chunk, inputs):
            yield item, model.predict(array[None])[0]


class OrderedSink:
    """Run ``fn(*args)`` on worker threads, at most ``depth`` in flight, completing in submission order.

    ``on_done(result)`` is called in the caller's thread for each finished task, in order. Use as a
    context manager: leaving the block normally waits for every task (raising the first error);
    leaving it on an exception cancels what has not started.
    """

    def __init__(self, threads: int, depth: int, on_done: Callable[[object], None] | None = None):
        if threads < 1 or depth < 1:
            raise ValueError("threads and depth must be >= 1")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="isnet-save")
        self._pending: deque[Future] = deque()
        self._depth = depth
        self._on_done = on_done or (lambda result: None)

    def submit(self, fn: Callable[..., object], *args) -> None:
        """Queue one task, first waiting for the oldest ones if ``depth`` tasks are in flight."""
        while len(self._pending) >= self._depth:
            self._finish_oldest()
        self._pending.append(self._executor.submit(fn, *args))
        self.collect()

    def collect(self) -> None:
        """Finish the tasks already done at the front of the queue (raising their errors)."""
        while self._pending and self._pending[0].done():
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        self._on_done(self._pending.popleft().result())

    def drain(self) -> None:
        """Wait for every queued task, in order."""
        while self._pending:
            self._finish_oldest()

    def __enter__(self) -> "OrderedSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            for future in self._pending:
                future.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)
