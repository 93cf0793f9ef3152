"""scripts/bench_scale.py output: the synthetic output is one that `status` and `query` take as a finished run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_scale.py"


def bench_output(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "output", "--shards", "12", "--shard-size", "8",
                           "--repeats", "1", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_report(report: dict) -> None:
    gen = report["generate"]
    assert gen["shards"] == gen["shards_requested"] == 12 and gen["manifest_rows"] == 96
    # shard 0 holds a video (30 frame rows instead of one): rows are items + 29
    assert gen["rows"] == 96 + 29
    # the script itself checks status's answer (12 committed, 0 pending, none damaged, every row) and
    # the query's count; here: every file it wrote was counted, and each command ran
    assert report["before"]["files"] == {"metadata": 12, "_shards": 12, "_compacted": 0}
    for command in ("status", "status_json", "query_count"):
        timing = report["before"][command]
        assert timing["median_s"] > 0 and timing["exit_codes"][0] in (0, 3, -6)
    if isinstance(report["after"], dict):      # compact exists: fewer Parquet files, the same answers
        assert report["after"]["files"]["metadata"] < 12


def test_synthetic_local_output_reads_as_a_finished_run():
    check_report(bench_output())


def test_synthetic_output_on_s3(s3_server):
    report = bench_output("--s3", "--endpoint-url", s3_server, "--threads", "4")
    assert report["output"].startswith("s3://")
    check_report(report)
