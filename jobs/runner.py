"""The driver side of a run: plan against what is committed, execute, commit shards, summarise."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa

from humanseg_batch.model import load_checkpoint
from humanseg_batch.pipeline.checkpoint import (check_or_write_run_record, commit_shard, load_state,
                                                record_failure, remove_uncommitted)
from humanseg_batch.pipeline.faults import pause_point
from humanseg_batch.pipeline.manifest import Manifest, read_manifest
from humanseg_batch.pipeline.plan import Sampling, Shard, plan_shards
from humanseg_batch.pipeline.process import ModelInfo, UnitContext
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import MASKS_DIR, METADATA_DIR, RUN_RECORD, SHARDS_DIR

from .config import RunConfig

EXIT_OK, EXIT_ITEM_ERRORS, EXIT_USAGE, EXIT_FAILED_SHARDS = 0, 3, 2, 4


def package_version() -> str:
    try:
        return version("humanseg-batch")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class RunSummary:
    shards_total: int = 0
    shards_skipped: int = 0          # already committed before this run
    shards_committed: int = 0
    shards_failed: dict[str, str] = field(default_factory=dict)
    items: int = 0
    rows_ok: int = 0
    rows_error: int = 0
    frames: int = 0
    removed_from_manifest: int = 0
    duplicates: list[str] = field(default_factory=list)
    seconds: float = 0.0
    first_result_s: float | None = None   # from the start of the run to the first unit written

    @property
    def exit_code(self) -> int:
        if self.shards_failed:
            return EXIT_FAILED_SHARDS
        return EXIT_ITEM_ERRORS if self.rows_error else EXIT_OK


@dataclass
class Prepared:
    """What both executors need: the shards still to do and how to process and commit them."""
    config: RunConfig
    storage: Storage
    manifest: Manifest
    shards: list[Shard]
    context: UnitContext
    model_path: str | None
    summary: RunSummary
    started: float = field(default_factory=time.time)
    # called as observer(frames, now) each time a work unit lands (progress, `bench`)
    observers: list = field(default_factory=list)

    def unit_done(self, frames: int) -> None:
        now = time.time()
        if self.summary.first_result_s is None:
            self.summary.first_result_s = now - self.started
        for observe in self.observers:
            observe(frames, now)


def model_info(cfg: RunConfig) -> tuple[ModelInfo, str]:
    model, info = load_checkpoint(cfg.weights, cfg.device)
    c = info["config"]
    threshold = cfg.threshold if cfg.threshold is not None else c.threshold
    return ModelInfo(name=c.tag,
                     weights_sha256=info["sha256"], input_height=c.input_height, input_width=c.input_width,
                     threshold=threshold, batch_size=cfg.batch_size), info["path"]


def run_record(cfg: RunConfig, model: ModelInfo, manifest: Manifest) -> dict:
    settings = cfg.to_dict()
    settings.update(weights_sha256=model.weights_sha256, threshold=model.threshold,
                    input_height=model.input_height, input_width=model.input_width, model=model.name)
    return {"config": settings, "manifest_fingerprint": manifest.fingerprint, "package_version": package_version(),
            "created": time.time(), "runs": 1}


def wipe_output(storage: Storage) -> None:
    """--overwrite: delete this tool's files under OUT (nothing else)."""
    for rel in (MASKS_DIR, METADATA_DIR, SHARDS_DIR):
        if storage.exists(rel):
            storage.fs.rm(storage.full(rel), recursive=True)
    storage.remove(RUN_RECORD)


def prepare(cfg: RunConfig, overwrite: bool = False, log=print, started: float | None = None) -> Prepared:
    storage = Storage(cfg.output, cfg.endpoint_url)
    model, model_path = model_info(cfg)
    log(f"model: {model.name}  weights: {model_path} (sha256 {model.weights_sha256[:16]})")
    manifest = read_manifest(cfg.manifest, cfg.endpoint_url)
    if overwrite:
        wipe_output(storage)
    check_or_write_run_record(storage, run_record(cfg, model, manifest), list(RunConfig.COMPAT))
    state = load_state(storage)
    leftovers = remove_uncommitted(storage, state)
    if leftovers:
        log(f"removed {len(leftovers)} uncommitted shard file(s) left by an interrupted run")
    done_ids = state.done_ids
    shards = plan_shards(manifest, cfg.shard_size, done_ids)
    pause_point("planned")
    manifest_ids = set(manifest.items.column("id").to_pylist())
    summary = RunSummary(shards_total=len(shards) + len(state.done), shards_skipped=len(state.done),
                         items=sum(len(s.items) for s in shards), duplicates=manifest.duplicates,
                         removed_from_manifest=len(done_ids - manifest_ids))
    ctx = UnitContext(output=storage, model=model, endpoint_url=cfg.endpoint_url, max_pixels=cfg.max_image_pixels,
                      sampling=Sampling(cfg.sample_every, cfg.sample_fps), chunk_seconds=cfg.video_chunk_seconds,
                      images_per_unit=cfg.images_per_unit, rle=cfg.rle)
    return Prepared(cfg, storage, manifest, shards, ctx, model_path, summary, started=started or time.time())


class ShardCommitter:
    """Driver-side bookkeeping: commit a shard once all its rows are in, or record why it failed."""

    def __init__(self, prep: Prepared):
        self.prep = prep
        self._positions = {p: k for k, p in enumerate(prep.manifest.items.column("position").to_pylist())}

    def _extras(self, shard: Shard) -> pa.Table:
        positions = [i.position for i in shard.items]
        rows = pa.table({"manifest_row": pa.array(positions, pa.int64())})
        extras = self.prep.manifest.extras
        if extras.num_columns == 0:
            return rows
        taken = extras.take(pa.array([self._positions[p] for p in positions], pa.int64()))
        for name in taken.column_names:
            rows = rows.append_column(name, taken.column(name))
        return rows

    def commit(self, shard: Shard, rows: list[dict], stats: dict) -> None:
        s = self.prep.summary
        ok = sum(r["status"] == "ok" for r in rows)
        video_frames = sum(r["frame_index"] is not None for r in rows)
        stats = dict(stats, rows_ok=ok, rows_error=len(rows) - ok, video_frames=video_frames)
        commit_shard(self.prep.storage, shard.name, [i.id for i in shard.items], rows, self._extras(shard), stats)
        s.shards_committed += 1
        s.rows_ok += ok
        s.rows_error += len(rows) - ok
        s.frames += video_frames

    def fail(self, shard: Shard, reason: str) -> None:
        record_failure(self.prep.storage, shard.name, reason, [i.id for i in shard.items])
        self.prep.summary.shards_failed[shard.name] = reason


def print_summary(summary: RunSummary, output: str, log=print) -> None:
    s = summary
    first = f" (first results after {s.first_result_s:.1f}s)" if s.first_result_s is not None else ""
    log(f"done in {s.seconds:.1f}s{first}: {s.shards_committed} shard(s) committed, {s.shards_skipped} already done, "
        f"{len(s.shards_failed)} failed; rows ok {s.rows_ok}, errors {s.rows_error}; video frames {s.frames}")
    if s.duplicates:
        log(f"manifest has {len(s.duplicates)} duplicate id(s), each processed once (e.g. {s.duplicates[0]!r})")
    if s.removed_from_manifest:
        log(f"{s.removed_from_manifest} committed item(s) are no longer in the manifest; their rows are kept")
    if s.shards_failed:
        name, reason = next(iter(s.shards_failed.items()))
        log(f"failed shard {name}: {reason}")
        log(f"next: humanseg-batch status {output}   then   humanseg-batch retry {output}")
    elif s.rows_error:
        log(f"some items failed; see: humanseg-batch status {output}  (retry them: humanseg-batch retry {output} --errors)")


def progress_bar(prep: Prepared):
    from tqdm import tqdm
    return tqdm(total=prep.summary.items, unit="item", disable=not prep.config.progress or not prep.summary.items,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

