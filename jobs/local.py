"""The in-process executor: no Ray, one shard after another. For debugging and tiny runs."""
from __future__ import annotations

import traceback

from humanseg_batch.model import Segmenter
from humanseg_batch.pipeline.process import LocalInference, expand_shard, run_unit

from .runner import Prepared, ShardCommitter, progress_bar


def add_stats(total: dict, more: dict) -> dict:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
    return total


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
    committer = ShardCommitter(prep)
    with progress_bar(prep) as bar:
        for shard in prep.shards:
            try:
                units, rows = expand_shard(shard, prep.context)
                stats: dict = {"units": len(units)}
                for unit in units:
                    unit_rows, unit_stats = run_unit(unit, prep.context, inference)
                    prep.unit_done(unit_stats["frames"])
                    rows.extend(unit_rows)
                    add_stats(stats, unit_stats)
                committer.commit(shard, rows, stats)
            except Exception as exc:  # a bug or a storage failure: this shard fails, the run goes on
                committer.fail(shard, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
            bar.update(len(shard.items))
