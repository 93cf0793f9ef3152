"""The anchor the `fast` tier's speed is held against: a plain MediaPipe selfie-segmentation loop over a
video (read -> segment -> threshold -> one PNG per frame), the way a user would write it by hand.

Runs in its own environment (mediapipe 0.10.21 pins numpy 1.26 and pulls jax):
    python3 -m venv model/recipe/.venv-mediapipe && model/recipe/.venv-mediapipe/bin/pip install mediapipe==0.10.21
    model/recipe/.venv-mediapipe/bin/python scripts/mediapipe_anchor.py examples/media/vtest.avi [--repeat 3]
Prints one JSON line per repeat: frames, seconds, frames/s (steady: the model is built before the clock).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import mediapipe as mp


def loop(video: str, out: Path, seg) -> int:
    cap = cv2.VideoCapture(video)
    n = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        prob = seg.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).segmentation_mask
        cv2.imwrite(str(out / f"{n:06d}.png"), (prob > 0.5).astype("uint8") * 255)
        n += 1
    cap.release()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("video")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                n = loop(args.video, Path(tmp), seg)
                s = time.perf_counter() - t
            print(json.dumps({"anchor": "mediapipe-selfie-general", "frames": n, "seconds": round(s, 2),
                              "fps": round(n / s, 1)}), flush=True)


if __name__ == "__main__":
    main()
