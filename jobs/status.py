"""What a run output holds: committed / failed / pending shards, row counts, common errors."""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import pyarrow.compute as pc
import pyarrow.parquet as pq

from humanseg_batch.pipeline.ledger import Ledger, read_run_record
from humanseg_batch.pipeline.manifest import ManifestError, ManifestReader
from humanseg_batch.pipeline.storage import Storage

from .runner import exit_code, plan_output


def common_errors(ledger: Ledger, shards: list[str], top: int = 5) -> list[tuple[str, int]]:
    """Most frequent error messages in the given committed shards."""
    if not shards:
        return []
    counts: collections.Counter = collections.Counter()
    with ThreadPoolExecutor(8) as pool:
        for errors in pool.map(lambda rel: _errors_in(ledger.storage, rel), ledger.files_of(shards)):
            counts.update(e.split("\n", 1)[0][:200] for e in errors if e)
    return counts.most_common(top)


def _errors_in(storage: Storage, rel: str) -> list[str]:
    """The error messages of one Parquet file's error rows. Read file by file, in the calling thread: a
    pyarrow dataset scan over s3fs left scan threads running at exit and aborted `status` after its
    answer (exit 134 in 4 of 8 runs on S3; apache/arrow#39162)."""
    with storage.open(rel) as f:
        table = pq.ParquetFile(f, pre_buffer=False).read(columns=["status", "error"], use_threads=False)
    return table.filter(pc.equal(table["status"], "error")).column("error").to_pylist()


def summarise(output: str, endpoint_url: str | None = None) -> dict:
    """Status of an output folder as a plain dict (what `status --json` prints)."""
    storage = Storage(output, endpoint_url)
    record = read_run_record(storage)
    if record is None:
        raise FileNotFoundError(f"{output} holds no humanseg-batch run (no _run.json)")
    cfg = record["config"]
    ledger = Ledger(storage)
    damaged = ledger.damaged()
    failed, pending, manifest_problem = ledger.failed, None, None
    try:    # as `retry` will see it: failure records that no longer match the plan are void
        committed = ledger.committed_names()
        plan = plan_output(ManifestReader(cfg["manifest"], endpoint_url or cfg.get("endpoint_url")), ledger,
                           cfg["shard_size"], committed)
        stale = set(ledger.stale_failures(plan.known(ledger.failed)))
        failed = {n: f for n, f in failed.items() if n not in stale}
        todo = plan.pending(committed | set(failed))
        pending = int(todo.sum())
    except (ManifestError, OSError) as exc:
        manifest_problem = str(exc)
    # from the part records' columns and the markers of the shards in no part: never a marker per shard of
    # an archive (`humanseg-batch compact`)
    counts = ledger.counts(exclude=set(damaged))
    summary = {
        "output": output, "manifest": cfg["manifest"], "model": cfg.get("model"),
        "weights_sha256": cfg.get("weights_sha256"), "runs": record.get("runs", 1),
        "shards": {"committed": counts["shards"], "failed": len(failed), "pending": pending},
        "rows": {"ok": counts["rows_ok"], "error": counts["rows_error"]},
        "items_committed": counts["items"],
        "frames": counts["video_frames"],
        "failed_shards": {s: f.get("reason", "").split("\n", 1)[0] for s, f in sorted(failed.items())},
        # committed, but the Parquet file is missing or not the one committed: `retry` redoes them whole
        "damaged_shards": damaged,
        "common_errors": [{"error": e, "rows": n} for e, n in
                          common_errors(ledger, [s for s in ledger.shards_with_errors() if s not in damaged])],
        "manifest_problem": manifest_problem,
    }
    summary["next"] = next_step(summary)
    return summary


def unfinished(s: dict) -> bool:
    """What `retry` would redo: failed, pending and damaged shards."""
    return bool(s["shards"]["failed"] or s["shards"]["pending"] or s["damaged_shards"])


def status_exit_code(s: dict) -> int:
    return exit_code(unfinished(s), bool(s["rows"]["error"]))


def next_step(s: dict) -> str:
    out = s["output"]
    if unfinished(s):
        return f"humanseg-batch retry {out}"
    if s["rows"]["error"]:
        return f"humanseg-batch retry {out} --errors   (re-processes the items whose rows have status=error)"
    return "nothing: every shard is committed and every row is ok"


def format_summary(s: dict) -> str:
    sh, rows = s["shards"], s["rows"]
    lines = [
        f"output     {s['output']}",
        f"manifest   {s['manifest']}",
        f"model      {s['model']} (weights {str(s['weights_sha256'])[:16]})",
        f"shards     {sh['committed']} committed, {sh['failed']} failed, "
        f"{'?' if sh['pending'] is None else sh['pending']} pending",
        f"rows       {rows['ok']} ok, {rows['error']} error ({s['items_committed']} items, {s['frames']} video frames)",
    ]
    if s["manifest_problem"]:
        lines.append(f"manifest   cannot be read now: {s['manifest_problem']}")
    for shard, reason in list(s["failed_shards"].items())[:5]:
        lines.append(f"failed     {shard}: {reason}")
    for shard, why in list(s["damaged_shards"].items())[:5]:
        lines.append(f"damaged    {shard}: {why}")
    for e in s["common_errors"]:
        lines.append(f"error x{e['rows']:<5} {e['error']}")
    lines.append(f"next       {s['next']}")
    return "\n".join(lines)
