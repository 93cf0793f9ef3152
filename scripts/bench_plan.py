#!/usr/bin/env python
"""Planning at scale, as `run` does it: `python scripts/bench_scale.py plan --rows 1000000,3000000,10000000`.

For each size: a synthetic CSV manifest (no media), then, each in a child process whose peak resident
memory (VmHWM) is read from /proc: the first plan of a fresh output; half of the shards committed
(with their real ids, zero rows, as after an interrupted run; not timed); a resume as `run` does it
(listing, the size check of every committed shard, planning against _plan.json, the pending set).
Prints one JSON line per size, then the slope between the two largest sizes and what it gives for
100 M rows.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def write_manifest(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.compute as pc

    with pacsv.CSVWriter(str(path), pa.schema([("uri", pa.string()), ("camera", pa.string())]),
                         write_options=pacsv.WriteOptions(quoting_style="none")) as w:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            i = pa.array(range(start, start + n), pa.int64())
            uri = pc.binary_join_element_wise("s3://archive/photos/", pc.utf8_lpad(pc.cast(pc.divide(i, 1000), pa.string()), 5, "0"),
                                              "/", pc.utf8_lpad(pc.cast(i, pa.string()), 8, "0"), ".jpg", "")
            cam = pc.binary_join_element_wise("cam", pc.cast(pc.remainder(i, 7), pa.string()), "")
            w.write_table(pa.table({"uri": uri, "camera": cam}))


def peak_mib() -> int:
    return [int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]


def step(what: str, manifest: str, out: str, shard_size: int) -> dict:
    """One measured step, in this (child) process."""
    from humanseg_batch.jobs.runner import plan_output, tidy_output
    from humanseg_batch.pipeline.ledger import Ledger
    from humanseg_batch.pipeline.manifest import ManifestReader
    from humanseg_batch.pipeline.planner import write_plan_state
    from humanseg_batch.pipeline.storage import Storage

    storage = Storage(out)
    t = time.perf_counter()
    ledger = Ledger(storage)
    if what == "resume":
        tidy_output(ledger, log=lambda *a: None)
    committed = ledger.committed_names()
    plan = plan_output(ManifestReader(manifest), ledger, shard_size, committed)
    pending = plan.pending(committed)
    seconds = time.perf_counter() - t
    if what == "first":
        write_plan_state(storage, plan)
    if what == "commit-half":
        commit_half(ledger, plan)
    return {"step": what, "seconds": round(seconds, 2), "shards": len(plan), "pending": int(pending.sum()),
            "peak_rss_mib": peak_mib()}


def commit_half(ledger, plan) -> None:
    """Commit the first half of the shards with their real items and no rows (not a measured step)."""
    import numpy as np

    half = np.zeros(len(plan), bool)
    half[: len(plan) // 2] = True
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda shard: ledger.commit(shard, [], {}), plan.shards(half)))


def run_step(what: str, manifest: Path, out: Path, shard_size: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "step", what, str(manifest), str(out), str(shard_size)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"step {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def bench_plan(sizes: list[int], shard_size: int, resume: bool = True) -> list[dict]:
    results = []
    for rows in sizes:
        work = Path(tempfile.mkdtemp(prefix="hsb-plan-"))
        manifest = work / "manifest.csv"
        write_manifest(manifest, rows)
        first = run_step("first", manifest, work / "out", shard_size)
        result = {"rows": rows, "shards": first["shards"], "plan_s": first["seconds"],
                  "plan_rows_per_s": round(rows / first["seconds"]), "plan_peak_rss_mib": first["peak_rss_mib"]}
        if resume:      # committing half of 10 M rows' shards takes minutes (not measured)
            run_step("commit-half", manifest, work / "out", shard_size)
            again = run_step("resume", manifest, work / "out", shard_size)
            assert again["pending"] == first["shards"] - first["shards"] // 2, (first, again)
            result.update(resume_s=again["seconds"], resume_peak_rss_mib=again["peak_rss_mib"],
                          resume_vs_plan=round(again["seconds"] / first["seconds"], 2))
        print(json.dumps(result), flush=True)
        results.append(result)
        shutil.rmtree(work, ignore_errors=True)
    if len(results) > 1:
        print(json.dumps(extrapolate(results, 100_000_000)), flush=True)
    return results


def extrapolate(results: list[dict], rows: int) -> dict:
    """Straight on from the two largest sizes. Not a fit through all of them: the CSV reader's buffers
    grow up to about 10 M rows and then stay (VmHWM of the reader alone: 131 / 188 / 252 / 253 MiB at
    1 / 3 / 10 / 30 M rows), so the small sizes would tilt a fitted line."""
    a, b = results[-2], results[-1]
    out = {"extrapolated_to_rows": rows, "from_sizes": [a["rows"], b["rows"]]}
    for key in [k for k in ("plan_s", "plan_peak_rss_mib", "resume_s", "resume_peak_rss_mib") if k in b]:
        slope = (b[key] - a[key]) / (b["rows"] - a["rows"])
        out[key] = round(b[key] + slope * (rows - b["rows"]), 1)
        out[f"{key}_per_million_rows"] = round(slope * 1e6, 3)
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["step"]:
    what, manifest, out, size = sys.argv[2:6]
    print(json.dumps(step(what, manifest, out, int(size))))
