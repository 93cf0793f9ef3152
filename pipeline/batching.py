"""Merging concurrent inference requests into model batches, with asyncio and no Ray.

Many units decode side by side and each sends the model at most `batch_size` frames at a
time, often fewer (the last batch of a unit, a unit of three images). A model server that ran
each request alone would run many small batches; this one takes every request waiting at that
moment, up to `max_batch` frames, into one model call. The Ray model actor is a thin wrapper.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class BatchingSegmenter:
    """Runs `infer` (e.g. `Segmenter.infer`) on merged requests, one model batch at a time."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int):
        self.infer_batch = infer
        self.max_batch = max_batch
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.runner: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(1)   # the model runs off the event loop, one batch at a time

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for `batch`, computed together with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((batch, future))
        if self.runner is None or self.runner.done():
            self.runner = asyncio.ensure_future(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """Waiting requests, oldest first, up to max_batch frames (a larger request goes alone)."""
        take, size = [], 0
        while self.pending and (not take or size + len(self.pending[0][0]) <= self.max_batch):
            take.append(self.pending.pop(0))
            size += len(take[-1][0])
        return take

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(0)          # let concurrent callers add their requests
            take = self._take()
            try:   # merging is inside: an error must reach the callers, never end the drain silently
                merged = take[0][0] if len(take) == 1 else np.concatenate([b for b, _ in take])
                probs = await loop.run_in_executor(self.pool, self.infer_batch, merged)
            except Exception as exc:  # noqa: BLE001 - hand the error to every caller of the batch
                for _, fut in take:
                    fut.set_exception(exc)
                continue
            start = 0
            for batch, fut in take:
                fut.set_result(probs[start:start + len(batch)])
                start += len(batch)
