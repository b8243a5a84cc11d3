"""Micro-batching: requests that arrive together share one inference call, off the event loop.

Each request puts its pre-processed input on a bounded queue and awaits its map. One task takes
the first waiting input, then gathers more for at most ``max_wait`` seconds or until it holds
``max_batch``, and runs them as one batch on a single inference thread (the runtime uses every
core for one call; two calls at once would only fight over them). Inputs of different shapes
(a pre-processing without a fixed Resize) run as separate calls. A full queue refuses at once
(:class:`QueueFull`) instead of growing: the server answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    """The inference queue holds ``max_queue`` inputs already."""


@dataclass(frozen=True)
class Prediction:
    """One request's map and how it was computed."""

    output: np.ndarray  # 1 x H x W float32
    batch: int  # inputs in the inference call that produced it
    queued_seconds: float  # from submission to the start of that call
    inference_seconds: float  # the call's duration


@dataclass
class _Waiting:
    tensor: np.ndarray
    future: asyncio.Future
    submitted: float


class MicroBatcher:
    """Group concurrent ``submit`` calls into ``predict(N x 3 x H x W)`` calls of up to ``max_batch``."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 4,
                 max_wait: float = 0.005, max_queue: int = 32):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait >= 0")
        self._predict = predict
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="isnet-infer")

    def start(self) -> None:
        """Start gathering (in the running event loop)."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._gather_forever(), name="isnet-batcher")

    async def stop(self) -> None:
        """Stop gathering; inputs still queued get an error. The server drains requests before this."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            waiting = self._queue.get_nowait()
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, tensor: np.ndarray) -> Prediction:
        """The map of one CHW float32 input; :class:`QueueFull` at once when the queue is full."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Waiting(tensor, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are waiting for inference") from None
        return await future

    async def _gather(self) -> list[_Waiting]:
        group = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(group) < self.max_batch:
            if not self._queue.empty():
                group.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                group.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return group

    async def _gather_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._gather()
            by_shape: dict[tuple, list[_Waiting]] = {}
            for waiting in group:
                by_shape.setdefault(waiting.tensor.shape, []).append(waiting)
            for members in by_shape.values():
                started = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(
                        self._executor, self._predict, np.stack([m.tensor for m in members]))
                except Exception as exc:  # noqa: BLE001 -- every waiting request gets the error
                    for member in members:
                        if not member.future.done():
                            member.future.set_exception(exc)
                    continue
                seconds = time.perf_counter() - started
                for member, output in zip(members, outputs):
                    if not member.future.done():  # its client may have gone
                        member.future.set_result(Prediction(output, len(members), started - member.submitted,
                                                            seconds))
