"""The in-process executor: no Ray, one shard after another; what `--executor auto` picks for small jobs."""
from __future__ import annotations

import traceback
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from humanseg_batch.model import Segmenter
from humanseg_batch.pipeline.process import expand_shard, run_unit

from .runner import Prepared, progress_bar


class ThreadedInference:
    """`Inference` with the model in a second thread: a unit decodes and writes its next batch while the
    model works on this one (torch releases the GIL), as a Ray decode task and a model actor overlap.
    vtest.avi whole process on this busy 2-core machine: 9.5-14.5 s (6 runs), the model in the decoding
    thread 11.3-12.7 s (2 runs) before the mask encoding got cheaper; the two cores now both work."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="humanseg-model")

    def submit(self, batch: np.ndarray) -> Future:
        return self.pool.submit(self.segmenter.infer, batch.copy())   # the caller refills its buffer

    def result(self, token: Future) -> np.ndarray:
        return token.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)     # no thread left running at interpreter exit


def execute_local(prep: Prepared) -> None:
    cfg = prep.config
    if cfg.device != "cuda":
        # as many model threads as --cpus-per-actor: more threads than free cores makes OpenMP's
        # spinning threads collapse throughput (measured 5x slower on a busy 2-core machine)
        import torch
        torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
    segmenter = Segmenter.from_checkpoint(prep.model_path, device=cfg.device, precision=cfg.precision,
                                          batch_size=cfg.batch_size, threshold=cfg.threshold, compile=cfg.compile)
    inference = ThreadedInference(segmenter)
    try:
        with progress_bar(prep) as bar:
            for shard in prep.shards:
                if prep.ledger.broken:      # the output storage failed as a whole: nothing more can be written
                    break
                run_shard(prep, shard, inference)
                bar.update(len(shard.items))
    finally:
        inference.close()


def run_shard(prep: Prepared, shard, inference) -> None:
    assembly = prep.assemble(shard)
    try:
        units, rows = expand_shard(shard, prep.context)
        assembly.expanded(units, rows)
        for unit in units:
            assembly.landed(*run_unit(unit, prep.context, inference))
    except Exception as exc:  # a bug or the output storage: this shard fails, the run goes on
        prep.ledger.note_storage_error(exc)
        assembly.fail(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
