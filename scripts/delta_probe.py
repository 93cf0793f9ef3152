#!/usr/bin/env python
"""How a Delta table (delta-rs) would hold this tool's commits: one append per shard of 64 rows.

Not a dependency of the project: run it in its own venv (`pip install deltalake numpy pyarrow`),
`python scripts/delta_probe.py 2000`. The table goes to /tmp/dlx/t. See docs/scale.md for the result.
"""
import json, os, shutil, sys, time
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

N = int(sys.argv[1]); root = "/tmp/dlx/t"  # noqa: S108 - a throw-away table
shutil.rmtree(root, ignore_errors=True)
rng = np.random.default_rng(0)
def shard(k):
    ids = [f"s3://archive/photos/{k:06d}/{i:03d}.jpg" for i in range(64)]
    return pa.table({"id": ids, "uri": ids, "person_fraction": rng.random(64).astype("float32"),
                     "status": ["ok"] * 64, "shard": [f"shard-{k*64:09d}"] * 64})
t = time.perf_counter(); lat = []
for k in range(N):
    s = time.perf_counter(); write_deltalake(root, shard(k), mode="append"); lat.append(time.perf_counter() - s)
commit_s = time.perf_counter() - t
files = sum(len(f) for _, _, f in os.walk(root))
t = time.perf_counter(); n = DeltaTable(root).to_pyarrow_dataset().count_rows(); read_s = time.perf_counter() - t
t = time.perf_counter(); DeltaTable(root).optimize.compact(); opt_s = time.perf_counter() - t
t = time.perf_counter(); n2 = DeltaTable(root).to_pyarrow_dataset().count_rows(); read2_s = time.perf_counter() - t
print(json.dumps({"commits": N, "commit_total_s": round(commit_s, 1), "commit_median_ms": round(1000 * float(np.median(lat)), 1),
                  "commit_last100_median_ms": round(1000 * float(np.median(lat[-100:])), 1), "files": files,
                  "count_s": round(read_s, 2), "rows": n, "optimize_s": round(opt_s, 1), "count_after_s": round(read2_s, 2), "rows_after": n2}))
