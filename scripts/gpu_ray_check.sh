#!/usr/bin/env bash
# The GPU Ray path, end to end: `humanseg-batch bench --executor ray` with GPU model actors (bf16 and
# fp16) on a 1080p H.264 clip and on vtest.avi (768x576), with the GPU's utilisation sampled meanwhile.
# Reports frames/s (pipeline steady state, model-only, CPU side), utilisation and the ratio
#   pipeline / min(model-only, CPU side of one decode task x decode tasks)      (issue 14: >= 0.8)
# into $OUT (or ./gpu-ray-check): summary.json, bench_*.json, util_*.txt.
#
# The device machine's Python (3.12, CUDA torch) has no Ray, PyAV or jsonschema: they travel as wheels,
# about 115 MB, while one call carries at most 64 MiB with the working tree (~16 MB). So `prepare`
# (here) packs them into one tar cut into parts, one per ignored folder .whl-1 .. .whl-N (N=3), and
# the device calls carry one folder each, back to back (a warm machine keeps what earlier calls
# carried; it waits about 30 s between calls):
#   here:     scripts/gpu_ray_check.sh prepare
#   device:   call k < N:  carry [".whl-k"]   command: bash scripts/gpu_ray_check.sh keep
#             call N:      carry [".whl-N"]   command: bash scripts/gpu_ray_check.sh run
#   rehearsal on CPU, here (the project venv has Ray):
#             PYTHON=.venv/bin/python QUICK=1 NO_CARRIED=1 scripts/gpu_ray_check.sh run --device cpu
#   (NO_CARRIED: the wheels are for the device's Python 3.12; `prepare` + `tar -t` rehearse them here)
# QUICK=1: a short 1080p clip and small batches, to check that every step runs. PRECISIONS=bf16: one only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-gpu-ray-check}
PART_MB=${PART_MB:-44}
WHEELS="ray==2.60.0 av==18.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1"

prepare() {
  local exclude tmp
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.whl-*/' "$exclude" 2>/dev/null || echo '/.whl-*/' >> "$exclude"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/wheels" $WHEELS
  tar -cf "$tmp/wheels.tar" -C "$tmp" wheels
  rm -rf .whl-[0-9]*
  split -b "${PART_MB}M" -d -a 1 "$tmp/wheels.tar" "$tmp/part-"
  local k=1
  for part in "$tmp"/part-*; do
    mkdir -p ".whl-$k" && mv "$part" ".whl-$k/part"
    k=$((k + 1))
  done
  rm -rf "$tmp"
  du -sh .whl-[0-9]*
  echo "device calls: carry .whl-1 ... .whl-$((k - 1)), one per call; the last runs: bash scripts/gpu_ray_check.sh run"
}

install_carried() {
  # every part is on the machine by now (the earlier calls' folders were kept): join, install privately
  if [ -z "${NO_CARRIED:-}" ] && compgen -G ".whl-[0-9]*/part" >/dev/null; then
    rm -rf /tmp/hsb-wheels /tmp/hsb-site && mkdir -p /tmp/hsb-wheels
    cat $(ls -d .whl-[0-9]* | sort -t- -k2 -n | sed 's|$|/part|') | tar -x -C /tmp/hsb-wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/hsb-site /tmp/hsb-wheels/wheels/*.whl
    export PYTHONPATH=/tmp/hsb-site:${PYTHONPATH:-}
  fi
  $PY -c 'import humanseg_batch.jobs' 2>/dev/null || $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  $PY -c 'import ray, av, humanseg_batch.jobs.ray_executor' || { echo "ray/av/humanseg-batch missing" >&2; exit 1; }
}

sample_gpu() {   # utilisation every 0.5 s into $1 until killed (nothing without nvidia-smi)
  command -v nvidia-smi >/dev/null || { : > "$1"; exec sleep infinity; }
  exec nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$1"
}

run_checks() {
  local device=cuda frames=400 batch=256 copies=4 precisions=${PRECISIONS:-bf16,fp16}
  [ "${1:-}" = "--device" ] && device=$2
  [ -n "${QUICK:-}" ] && { frames=40; batch=16; copies=2; }
  mkdir -p "$OUTDIR"
  install_carried
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$OUTDIR/gpu.txt"
  $PY scripts/make_1080p_clip.py /tmp/hsb-1080p.mp4 --frames "$frames"
  local name video
  for name in 1080p vtest; do
    video=/tmp/hsb-1080p.mp4; [ "$name" = vtest ] && video=$PWD/examples/media/vtest.avi
    sample_gpu "$OUTDIR/util_$name.txt" & local sampler=$!
    RAY_USAGE_STATS_ENABLED=0 $PY -m humanseg_batch.jobs.cli bench --video "$video" --device "$device" \
      --executor ray --precision "$precisions" --batch-size "$batch" --video-copies "$copies" --images 0 \
      --model-frames 2048 --repeat 3 --json > "$OUTDIR/bench_$name.json"
    kill "$sampler" 2>/dev/null || true
  done
  $PY - "$OUTDIR" <<'PY'
import json, os, sys
out = sys.argv[1]
summary = []
for name in ("1080p", "vtest"):
    r = json.load(open(f"{out}/bench_{name}.json"))
    util = [float(line.split(",")[0]) for line in open(f"{out}/util_{name}.txt") if line.strip()]
    busy = [u for u in util if u > 0]
    cpus = r["conditions"]["cpu_count"]
    tasks = max(1, cpus - 1)          # decode tasks: the cluster's CPUs less the model actor's one
    cpu_side = r["decode"]["video_cpu_side_fps"]
    for run in r["runs"]:
        p = run["pipeline"]
        bound = min(run["model_fps"], cpu_side * tasks)
        row = {"clip": name, "precision": run["precision"], "batch": run["batch_size"],
               "pipeline_fps": round(p["steady_fps"], 1), "overall_fps": round(p["overall_fps"], 1),
               "model_fps": round(run["model_fps"], 1), "cpu_side_fps_one_task": round(cpu_side, 1),
               "decode_tasks": tasks, "ratio": round(p["steady_fps"] / bound, 3),
               "gpu_util_mean_busy": round(sum(busy) / len(busy), 1) if busy else None,
               "gpu_util_max": max(util) if util else None, "device": r["conditions"]["device"],
               "cpu_side_ratio": round(r["decode"].get("video_cpu_side_ratio", 0), 3)}
        summary.append(row)
        print(json.dumps(row))
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
}

case "${1:-}" in
  prepare) prepare ;;
  keep) du -sh .whl-[0-9]* ;;
  run) shift; run_checks "$@" ;;
  *) echo "usage: $0 prepare | keep | run [--device cuda|cpu]" >&2; exit 2 ;;
esac
