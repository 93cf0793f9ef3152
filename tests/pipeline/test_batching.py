"""BatchingSegmenter: concurrent requests merged into model batches, without Ray."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from humanseg_batch.model import Segmenter
from humanseg_batch.pipeline.batching import BatchingSegmenter


@pytest.fixture(scope="module")
def segmenter(tiny_weights):
    return Segmenter.from_checkpoint(tiny_weights, device="cpu", precision="fp32", batch_size=8)


def frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 48, 3), dtype=np.uint8)


def run_concurrently(batcher: BatchingSegmenter, requests: list[np.ndarray]) -> list:
    async def all_of_them():
        return await asyncio.gather(*(batcher.infer(r) for r in requests), return_exceptions=True)
    return asyncio.run(all_of_them())


def test_concurrent_requests_share_model_batches_and_get_their_own_rows(segmenter):
    calls: list[int] = []

    def infer(batch):
        calls.append(len(batch))
        return segmenter.infer(batch)

    requests = [frames(n, seed) for seed, n in enumerate([3, 2, 3, 5, 1])]
    results = run_concurrently(BatchingSegmenter(infer, max_batch=8), requests)
    # oldest first, up to 8 frames: 3+2+3, then 5+1
    assert calls == [8, 6]
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result, segmenter.infer(request))


def test_a_request_larger_than_a_batch_runs_alone(segmenter):
    calls: list[int] = []

    def infer(batch):
        calls.append(len(batch))
        return segmenter.infer(batch)

    requests = [frames(2, 0), frames(11, 1), frames(2, 2)]
    results = run_concurrently(BatchingSegmenter(infer, max_batch=8), requests)
    assert calls == [2, 11, 2]
    assert [len(r) for r in results] == [2, 11, 2]


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs(segmenter):
    wrong_size = np.zeros((2, 20, 20, 3), np.uint8)       # the model's buffer is 32 x 48
    requests = [frames(3, 0), wrong_size, frames(4, 1), frames(2, 2)]
    results = run_concurrently(BatchingSegmenter(segmenter.infer, max_batch=5), requests)
    # batches: [3 + 2 (the bad one)] fails both callers; [4] alone (4 + 2 > 5); [2]
    assert isinstance(results[0], ValueError) and isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[2], segmenter.infer(requests[2]))
    np.testing.assert_array_equal(results[3], segmenter.infer(requests[3]))
