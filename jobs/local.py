"""The in-process executor: no Ray, one shard after another; what `--executor auto` picks for small jobs.

The model runs in the decoding thread. A second model thread measured slower on this busy 2-core
machine (vtest.avi in-process: 4.4-5.9 s serial, 4.7-6.9 s threaded, 6 alternated pairs)."""
from __future__ import annotations

import traceback

from humanseg_batch.model import Segmenter
from humanseg_batch.pipeline.process import LocalInference, expand_shard, run_unit

from .runner import Prepared, progress_bar


def execute_local(prep: Prepared) -> None:
    cfg = prep.config
    if cfg.device != "cuda":
        # as many model threads as --cpus-per-actor: more threads than free cores makes OpenMP's
        # spinning threads collapse throughput (measured 5x slower on a busy 2-core machine)
        import torch
        torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
    segmenter = Segmenter.from_checkpoint(prep.model_path, device=cfg.device, precision=cfg.precision,
                                          batch_size=cfg.batch_size, threshold=cfg.threshold, compile=cfg.compile)
    inference = LocalInference(segmenter)
    with progress_bar(prep) as bar:
        for shard in prep.shards:
            if prep.ledger.broken:      # the output storage failed as a whole: nothing more can be written
                break
            assembly = prep.assemble(shard)
            try:
                units, rows = expand_shard(shard, prep.context)
                assembly.expanded(units, rows)
                for unit in units:
                    assembly.landed(*run_unit(unit, prep.context, inference))
            except Exception as exc:  # a bug or the output storage: this shard fails, the run goes on
                prep.ledger.note_storage_error(exc)
                assembly.fail(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
            bar.update(len(shard.items))
