"""The driver side of a run: check the run record, ask the ledger what is left, hand shards to an
executor (each feeds the ledger's ShardAssembly, which commits), summarise."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterator
from importlib.metadata import PackageNotFoundError, version

from humanseg_batch.model import load_checkpoint
from humanseg_batch.pipeline.faults import pause_point
from humanseg_batch.pipeline.ledger import (Ledger, ShardAssembly, check_or_write_run_record, check_run_record,
                                            wipe_output)
from humanseg_batch.pipeline.manifest import ManifestReader
from humanseg_batch.pipeline.plan import Sampling, Shard
from humanseg_batch.pipeline.planner import Plan, plan_manifest, read_plan_state, wipe_plan, write_plan_state
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
WAIT_HELP = "If another run is writing OUT, wait until it ends (or its lease goes stale) instead of exiting with 2."


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
    duplicates: int = 0                   # manifest rows dropped because their id came earlier
    duplicate_ids: list[str] = field(default_factory=list)     # a few of them
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
    plan: Plan
    ledger: Ledger
    shards: Iterator[Shard]            # read from the manifest as the executor asks: never all in memory
    shard_count: int
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


def run_record(cfg: RunConfig, model: ModelInfo, fingerprint: str | None) -> dict:
    settings = cfg.to_dict()
    settings.update(weights_sha256=model.weights_sha256, threshold=model.threshold,
                    input_height=model.input_height, input_width=model.input_width, model=model.name)
    return {"config": settings, "manifest_fingerprint": fingerprint, "package_version": package_version(),
            "created": time.time(), "runs": 1}


def fix_manifest_columns(old_record: dict | None, reader: ManifestReader, output: str, log=print) -> list[dict]:
    """The manifest's extra columns as the first run into OUT had them (kept in its run record), so every
    Parquet file of OUT has one schema; say which new columns are left out."""
    extras = reader.schema.empty_table().select(reader.extra_names)
    # records older than this rule have no list: the current manifest's columns, as before
    fixed = old_record["manifest_columns"] if old_record and "manifest_columns" in old_record else extras_columns(extras)
    _, new = conform_extras(extras, fixed)
    if new:
        log(f"manifest column(s) {', '.join(new)} are new since the first run into {output}: left out of "
            "the rows (every Parquet file of an output keeps one schema); use a new --output to include them")
    return fixed


def plan_output(reader: ManifestReader, ledger: Ledger, shard_size: int, committed: set[str]) -> Plan:
    """The manifest's shards for this output (pipeline/planner.py); `committed`: ledger.committed_names(),
    which the caller keeps for the pending set (one listing of a million markers, not two)."""
    return plan_manifest(reader, shard_size, read_plan_state(ledger.storage), committed, lambda: ledger.done_ids,
                         ledger.storage)


def tidy_output(ledger: Ledger, log=print, verify: bool = False) -> None:
    """Under the lease: what earlier writers left half-done or damaged becomes work again. A shard whose
    file is missing is found from listings; `verify` (retry) also compares every file's size with its
    marker, one read per committed shard (resuming 78,000 shards: 20 s), which a plain rerun skips:
    our writes are atomic, so only something outside the tool can leave a file of the wrong size."""
    temps = ledger.remove_temp_files()
    if temps:
        log(f"removed {len(temps)} temporary file(s) of interrupted writes")
    if verify:
        damaged = ledger.damaged(footers=False)     # sizes only: a resume of 10,000 shards reads no footers
    else:
        damaged = dict.fromkeys(ledger.committed_files()[1], "its Parquet file is missing")
    if damaged:
        name, why = next(iter(damaged.items()))
        log(f"{len(damaged)} committed shard(s) are damaged (e.g. {name}: {why}); they are redone whole")
        ledger.uncommit(list(damaged))
    leftovers = ledger.remove_leftovers()
    if leftovers:
        log(f"removed {len(leftovers)} uncommitted shard file(s) left by an interrupted run")


def prepare(cfg: RunConfig, overwrite: bool = False, log=print, started: float | None = None,
            lease=None, redo_errors: bool = False, verify: bool = False) -> Prepared:
    """Everything before the first unit; `lease` (pipeline/lease.py) guards every write to OUT; `verify`:
    check every committed file's size (retry)."""
    storage = Storage(cfg.output, cfg.endpoint_url, writer_check=lease.check if lease else None)
    reader = ManifestReader(cfg.manifest, cfg.endpoint_url)
    model, model_path = model_info(cfg)
    if overwrite:
        wipe_output(storage)
        wipe_plan(storage)
    old_record = check_run_record(storage, run_record(cfg, model, None), list(RunConfig.COMPAT),
                                  RunConfig.COMPAT_ABSENT)
    ledger = Ledger(storage)
    if redo_errors:
        log(f"re-processing {len(ledger.uncommit_errors())} shard(s) with error rows")
    tidy_output(ledger, log, verify)
    committed = ledger.committed_names()
    plan = plan_output(reader, ledger, cfg.shard_size, committed)
    fixed = fix_manifest_columns(old_record, reader, storage.root, log)
    check_or_write_run_record(storage, dict(run_record(cfg, model, reader.fingerprint), manifest_columns=fixed),
                              list(RunConfig.COMPAT), RunConfig.COMPAT_ABSENT)
    write_plan_state(storage, plan)
    pending = plan.pending(committed)
    if ledger.clear_stale_failures(plan.known(ledger.failed)):
        log("cleared failure records of shards that are no longer in the plan (the manifest changed)")
    if plan.mode == "ids":
        log(f"planned by item ids: {storage.root} was written by an older version, or the manifest changed before "
            "its last planned row; this holds every committed id in memory")
    pause_point("planned")
    summary = RunSummary(shards_total=int(pending.sum()) + len(committed), shards_skipped=len(committed),
                         items=int(plan.count[pending].sum()), duplicates=len(plan.duplicates),
                         duplicate_ids=plan.duplicate_ids, removed_from_manifest=plan.removed)
    executor, why = choose_executor(cfg.executor, cfg.address, plan, pending, cfg.endpoint_url)
    log(f"executor: {executor} ({why})")
    log(f"model: {model.name}  weights: {model_path} (sha256 {model.weights_sha256[:16]})")
    ctx = UnitContext(output=storage, model=model, endpoint_url=cfg.endpoint_url, max_pixels=cfg.max_image_pixels,
                      sampling=Sampling(cfg.sample_every, cfg.sample_fps), chunk_seconds=cfg.video_chunk_seconds,
                      images_per_unit=cfg.images_per_unit, rle=cfg.rle, temporal_smoothing=cfg.temporal_smoothing)
    shards = plan.shards(pending, lambda extras: conform_extras(extras, fixed)[0])
    return Prepared(cfg, storage, plan, ledger, shards, int(pending.sum()), ctx, model_path, summary,
                    started=started or time.time(), executor=executor)


def print_summary(summary: RunSummary, output: str, log=print) -> None:
    s = summary
    first = f" (first results after {s.first_result_s:.1f}s)" if s.first_result_s is not None else ""
    log(f"done in {s.seconds:.1f}s{first}: {s.shards_committed} shard(s) committed, {s.shards_skipped} already done, "
        f"{len(s.shards_failed)} failed; rows ok {s.rows_ok}, errors {s.rows_error}; video frames {s.frames}")
    if s.duplicates:
        example = f" (e.g. {s.duplicate_ids[0]!r})" if s.duplicate_ids else ""
        log(f"manifest has {s.duplicates} row(s) with a duplicate id (seen in an earlier row), each id processed "
            f"once{example}")
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

