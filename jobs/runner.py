"""The driver side of a run: check the run record, ask the ledger what is left, hand shards to an
executor (each feeds the ledger's ShardAssembly, which commits), summarise."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from humanseg_batch.model import load_checkpoint
from humanseg_batch.pipeline.faults import pause_point
from humanseg_batch.pipeline.ledger import (Ledger, ShardAssembly, check_or_write_run_record, read_run_record,
                                            wipe_output)
from humanseg_batch.pipeline.manifest import Manifest, read_manifest
from humanseg_batch.pipeline.plan import Sampling, Shard
from humanseg_batch.pipeline.process import ModelInfo, UnitContext
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import conform_extras, extras_columns

from .choice import choose_executor
from .config import RunConfig

EXIT_OK, EXIT_ITEM_ERRORS, EXIT_USAGE, EXIT_FAILED_SHARDS, EXIT_STORAGE = 0, 3, 2, 4, 5
EXIT_CODES_HELP = (f"Exit codes: {EXIT_OK} all items ok; {EXIT_ITEM_ERRORS} finished, some items have status=error; "
                   f"{EXIT_FAILED_SHARDS} some shards failed or are damaged (run `humanseg-batch retry OUT`); "
                   f"{EXIT_USAGE} usage or input error, or OUT is being written by another run; "
                   f"{EXIT_STORAGE} the output storage failed (unreachable, no credentials, disk full): "
                   "committed shards are kept, rerun when it is fixed.")


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
    storage_error: str | None = None      # the output storage failed as a whole: the run stopped early

    @property
    def exit_code(self) -> int:
        if self.storage_error:
            return EXIT_STORAGE
        return exit_code(bool(self.shards_failed), bool(self.rows_error))

    def count(self, ledger: Ledger) -> None:
        """Add what this run committed and failed (the ledger's record of this process)."""
        for marker in ledger.committed_now:
            self.shards_committed += 1
            self.rows_ok += marker["rows_ok"]
            self.rows_error += marker["rows_error"]
            self.frames += marker["video_frames"]
        self.shards_failed.update(ledger.failed_now)
        self.storage_error = ledger.broken


def exit_code(unfinished: bool, row_errors: bool) -> int:
    """The exit code of `run`, `retry` and `status`: unfinished shards first, then error rows."""
    if unfinished:
        return EXIT_FAILED_SHARDS
    return EXIT_ITEM_ERRORS if row_errors else EXIT_OK


@dataclass
class Prepared:
    """What both executors need: the shards still to do, how to process them, and the ledger to commit them."""
    config: RunConfig
    storage: Storage
    manifest: Manifest
    ledger: Ledger
    shards: list[Shard]
    context: UnitContext
    model_path: str | None
    summary: RunSummary
    started: float = field(default_factory=time.time)
    # called as observer(frames, now) each time a work unit lands (progress, `bench`)
    observers: list = field(default_factory=list)
    executor: str = "ray"              # the one that runs it: --executor, or chosen for --executor auto

    def unit_done(self, frames: int) -> None:
        now = time.time()
        if self.summary.first_result_s is None:
            self.summary.first_result_s = now - self.started
        for observe in self.observers:
            observe(frames, now)

    def assemble(self, shard: Shard) -> ShardAssembly:
        """The assembly an executor feeds with this shard's units; it commits when complete."""
        return ShardAssembly(shard, self.ledger, on_unit=self.unit_done)


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


def fix_manifest_columns(storage: Storage, manifest: Manifest, log=print) -> list[dict]:
    """Conform the manifest's extra columns to those of the first run into OUT (kept in its run record), so
    every Parquet file of OUT has one schema; say which new columns are left out."""
    old = read_run_record(storage)
    # records older than this rule have no list: the current manifest's columns, as before
    fixed = old["manifest_columns"] if old and "manifest_columns" in old else extras_columns(manifest.extras)
    manifest.extras, new = conform_extras(manifest.extras, fixed)
    if new:
        log(f"manifest column(s) {', '.join(new)} are new since the first run into {storage.root}: left out of "
            "the rows (every Parquet file of an output keeps one schema); use a new --output to include them")
    return fixed


def tidy_output(ledger: Ledger, log=print) -> None:
    """Under the lease: what earlier writers left half-done or damaged becomes work again."""
    temps = ledger.remove_temp_files()
    if temps:
        log(f"removed {len(temps)} temporary file(s) of interrupted writes")
    damaged = ledger.damaged(footers=False)     # sizes only: a resume of 10,000 shards reads no footers
    if damaged:
        name, why = next(iter(damaged.items()))
        log(f"{len(damaged)} committed shard(s) are damaged (e.g. {name}: {why}); they are redone whole")
        ledger.uncommit(list(damaged))
    leftovers = ledger.remove_leftovers()
    if leftovers:
        log(f"removed {len(leftovers)} uncommitted shard file(s) left by an interrupted run")


def prepare(cfg: RunConfig, overwrite: bool = False, log=print, started: float | None = None,
            lease=None, redo_errors: bool = False) -> Prepared:
    """Everything before the first unit; `lease` (pipeline/lease.py) guards every write to OUT."""
    storage = Storage(cfg.output, cfg.endpoint_url, writer_check=lease.check if lease else None)
    manifest = read_manifest(cfg.manifest, cfg.endpoint_url)
    executor, why = choose_executor(cfg.executor, cfg.address, manifest, cfg.endpoint_url)
    log(f"executor: {executor} ({why})")
    model, model_path = model_info(cfg)
    log(f"model: {model.name}  weights: {model_path} (sha256 {model.weights_sha256[:16]})")
    if overwrite:
        wipe_output(storage)
    record = dict(run_record(cfg, model, manifest), manifest_columns=fix_manifest_columns(storage, manifest, log))
    check_or_write_run_record(storage, record, list(RunConfig.COMPAT), RunConfig.COMPAT_ABSENT)
    ledger = Ledger(storage, manifest)
    if redo_errors:
        log(f"re-processing {len(ledger.uncommit_errors())} shard(s) with error rows")
    tidy_output(ledger, log)
    shards = ledger.plan(cfg.shard_size)
    if ledger.clear_stale_failures(shards):
        log("cleared failure records of shards that are no longer in the plan (the manifest changed)")
    pause_point("planned")
    done_ids = ledger.done_ids
    manifest_ids = set(manifest.items.column("id").to_pylist())
    summary = RunSummary(shards_total=len(shards) + len(ledger.done), shards_skipped=len(ledger.done),
                         items=sum(len(s.items) for s in shards), duplicates=manifest.duplicates,
                         removed_from_manifest=len(done_ids - manifest_ids))
    ctx = UnitContext(output=storage, model=model, endpoint_url=cfg.endpoint_url, max_pixels=cfg.max_image_pixels,
                      sampling=Sampling(cfg.sample_every, cfg.sample_fps), chunk_seconds=cfg.video_chunk_seconds,
                      images_per_unit=cfg.images_per_unit, rle=cfg.rle, temporal_smoothing=cfg.temporal_smoothing)
    return Prepared(cfg, storage, manifest, ledger, shards, ctx, model_path, summary, started=started or time.time(),
                    executor=executor)


def print_summary(summary: RunSummary, output: str, log=print) -> None:
    s = summary
    first = f" (first results after {s.first_result_s:.1f}s)" if s.first_result_s is not None else ""
    log(f"done in {s.seconds:.1f}s{first}: {s.shards_committed} shard(s) committed, {s.shards_skipped} already done, "
        f"{len(s.shards_failed)} failed; rows ok {s.rows_ok}, errors {s.rows_error}; video frames {s.frames}")
    if s.duplicates:
        log(f"manifest has {len(s.duplicates)} duplicate id(s), each processed once (e.g. {s.duplicates[0]!r})")
    if s.removed_from_manifest:
        log(f"{s.removed_from_manifest} committed item(s) are no longer in the manifest; their rows are kept")
    if s.storage_error:
        log(f"error: {s.storage_error}")
        log(f"the run stopped; committed shards are kept. When the storage is back: humanseg-batch retry {output}")
    elif s.shards_failed:
        name, reason = next(iter(s.shards_failed.items()))
        log(f"failed shard {name}: {reason}")
        log(f"next: humanseg-batch status {output}   then   humanseg-batch retry {output}")
    elif s.rows_error:
        log(f"some items failed; see: humanseg-batch status {output}  (retry them: humanseg-batch retry {output} --errors)")


def progress_bar(prep: Prepared):
    from tqdm import tqdm

    from .console import show_progress  # none under --quiet or --log-format json
    shown = prep.config.progress and prep.summary.items and show_progress()
    return tqdm(total=prep.summary.items, unit="item", disable=not shown,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

