#!/usr/bin/env bash
# GPU readiness check (< 5 min on one GPU): `humanseg-batch bench` on CUDA for fp32/fp16/bf16 and
# several batch sizes, model-only and end to end, with GPU memory. Writes JSON to $OUT (or ./gpu-check).
#   EXECUTOR=local|ray (default: ray if importable, else local)   WEIGHTS=path (default: shipped)
# Wheels in .whl/ (e.g. av for a machine without it) are installed to a private folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-gpu-check}
mkdir -p "$OUTDIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/hsb-site .whl/*.whl
  export PYTHONPATH=/tmp/hsb-site:${PYTHONPATH:-}
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt"
EXECUTOR=${EXECUTOR:-$($PY -c 'import ray' 2>/dev/null && echo ray || echo local)}
W=${WEIGHTS:+--weights $WEIGHTS}
B="$PY -m humanseg_batch.jobs.cli bench $W --device cuda --executor $EXECUTOR"
# model-only sweep: every precision and batch size
$B --skip-pipeline --precision fp32,fp16,bf16 --batch-size 16,64,256 --model-frames 2048 --images 0 \
   --json > "$OUTDIR/bench_model.json"
# end to end through the executor, one setting
$B --precision bf16 --batch-size 256 --video-copies 2 --images 32 --json > "$OUTDIR/bench_pipeline.json"
# torch.compile, model-only
$B --skip-pipeline --compile --precision bf16 --batch-size 256 --model-frames 2048 --images 0 --json \
   > "$OUTDIR/bench_compile.json" || true
$PY - "$OUTDIR" <<'PY'
import json, sys
for name in ("bench_model.json", "bench_pipeline.json", "bench_compile.json"):
    try:
        r = json.load(open(f"{sys.argv[1]}/{name}"))
    except (OSError, ValueError):
        continue
    print(name, r["conditions"]["model"], r["startup"])
    for run in r["runs"]:
        p = run.get("pipeline", {})
        print(f"  {run['precision']:>5} bs {run['batch_size']:>4}: model {run['model_fps']:8.0f} fps, "
              f"pipeline {p.get('steady_fps', 0):7.0f} fps, gpu peak {run['model'].get('gpu_peak_mib', 0):.0f} MiB")
PY
