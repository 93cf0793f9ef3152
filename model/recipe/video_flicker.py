"""Flicker and IoU on short camera-move clips made from the labelled eval photos, with and without the
temporal smoothing the pipeline applies to video (model/temporal.py).

No human-labelled video is at hand, so each clip is a slow pan and zoom over one eval photo: the truth
moves with the camera, so its own flicker is known, and a model's extra flicker is its own.

    .venv/bin/python model/recipe/video_flicker.py fast quality [--clips 40 --frames 16]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from humanseg_batch.model.data import load_folder
from humanseg_batch.model.losses import confusion, scores
from humanseg_batch.model.preprocess import letterbox_into
from humanseg_batch.model.segmenter import Segmenter, finish_mask
from humanseg_batch.model.temporal import flicker, smooth

HERE = Path(__file__).resolve().parent


def camera_move(image: np.ndarray, label: np.ndarray, frames: int, rng: np.random.Generator):
    """Frames of a pan + zoom over the photo (a crop window of 80-90 % moving by up to 10 %), with labels."""
    h, w = label.shape
    s0, s1 = rng.uniform(0.8, 0.9), rng.uniform(0.8, 0.9)
    dx, dy = rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05)
    out = []
    for t in np.linspace(0, 1, frames):
        s = s0 + (s1 - s0) * t
        ch, cw = int(h * s), int(w * s)
        y0 = int(np.clip((h - ch) / 2 + dy * h * (t - 0.5), 0, h - ch))
        x0 = int(np.clip((w - cw) / 2 + dx * w * (t - 0.5), 0, w - cw))
        img = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(label[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_NEAREST)
        out.append((img, lab))
    return out


def clip_scores(seg: Segmenter, clip) -> dict:
    H, W = seg.config.input_height, seg.config.input_width
    buf = np.zeros((len(clip), H, W, 3), np.uint8)
    sizes = [letterbox_into(buf[i], img) for i, (img, _) in enumerate(clip)]
    probs = list(seg.infer(buf))
    out = {"truth_flicker": flicker([lab == 1 for _, lab in clip])}
    for name, ps in (("raw", probs), ("smoothed", smooth(probs))):
        masks = [finish_mask(p, size, lab.shape, seg.threshold).mask for p, size, (_, lab) in zip(ps, sizes, clip)]
        known = [lab != 2 for _, lab in clip]
        out[f"{name}_flicker"] = flicker([m.astype(bool) & k for m, k in zip(masks, known)])
        out[f"{name}_iou"] = float(np.mean([scores(*confusion(m > 0, lab))["iou"] for m, (_, lab) in zip(masks, clip)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", default=str(HERE / ".cache/human/eval"))
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--frames", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    samples = load_folder(args.data)
    people = [i for i, m in enumerate(samples.masks) if (m == 1).any()]
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(people, size=min(args.clips, len(people)), replace=False))
    clips = [camera_move(samples.images[i], samples.masks[i], args.frames, np.random.default_rng(int(i)))
             for i in chosen]
    for weights in args.weights:
        seg = Segmenter.from_checkpoint(weights, device="cpu", precision="fp32", batch_size=args.frames)
        rows = [clip_scores(seg, c) for c in clips]
        summary = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
        print(json.dumps({"weights": weights, "model": seg.config.tag, "clips": len(rows), **summary}))


if __name__ == "__main__":
    main()
