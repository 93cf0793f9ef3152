#!/usr/bin/env python
"""How a Delta table (delta-rs) would hold this tool's commits: one append per shard of 64 rows.

Not a dependency of the project: run it in its own venv (`pip install deltalake numpy pyarrow`),
`python scripts/delta_probe.py 2000 [TABLE_DIR]`. Prints one JSON line; docs/scale.md has the result.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake


def shard(k: int, rng: np.random.Generator) -> pa.Table:
    """64 rows shaped like a shard's (the columns that matter for size)."""
    ids = [f"s3://archive/photos/{k:06d}/{i:03d}.jpg" for i in range(64)]
    return pa.table({"id": ids, "uri": ids, "person_fraction": rng.random(64).astype("float32"),
                     "status": ["ok"] * 64, "shard": [f"shard-{k * 64:09d}"] * 64})


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(commits: int, root: Path) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    each = [timed(lambda k=k: write_deltalake(str(root), shard(k, rng), mode="append"))[0] for k in range(commits)]
    count_s, rows = timed(lambda: DeltaTable(str(root)).to_pyarrow_dataset().count_rows())
    optimize_s, _ = timed(lambda: DeltaTable(str(root)).optimize.compact())
    after_s, rows_after = timed(lambda: DeltaTable(str(root)).to_pyarrow_dataset().count_rows())
    return {"commits": commits, "commit_total_s": round(sum(each), 1),
            "commit_median_ms": round(1000 * float(np.median(each)), 1),
            "commit_last100_median_ms": round(1000 * float(np.median(each[-100:])), 1),
            "files": sum(1 for p in root.rglob("*") if p.is_file()), "count_s": round(count_s, 2), "rows": rows,
            "optimize_s": round(optimize_s, 1), "count_after_optimize_s": round(after_s, 2), "rows_after": rows_after}


if __name__ == "__main__":
    where = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="delta-probe-")) / "t"
    print(json.dumps(main(int(sys.argv[1]), where)))
