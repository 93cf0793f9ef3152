"""Evaluating a checkpoint on a labelled set with the Segmenter, at each image's own size.

`evaluate(weights, data, out_csv, out_json, sheet)` writes one CSV row per image and returns (and
optionally writes) the overall numbers: per-image means, means by person size, false person pixels
on person-free photos, pooled pixel counts; `sheet` draws the worst images with their masks.
Pixels labelled unknown (value 2, see model/data.py) are left out of every count.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np

from .data import UNKNOWN, SampleSet, load_samples
from .losses import confusion, scores
from .segmenter import Segmenter

METRICS = ("iou", "dice", "precision", "recall", "fpr")
CSV_FIELDS = ("name", "width", "height", "truth_pixels", "pred_pixels", "tp", "fp", "fn", "tn", "size") + METRICS
# person size buckets: share of the photo's labelled pixels that are person (small people are the hard case)
SIZES = (("small", 0.0, 0.02), ("medium", 0.02, 0.15), ("large", 0.15, 1.01))


def size_bucket(truth_pixels: int, known_pixels: int) -> str:
    """'none' for a person-free photo, else small (< 2 % of the frame), medium (2-15 %) or large (> 15 %)."""
    if not truth_pixels:
        return "none"
    share = truth_pixels / max(1, known_pixels)
    return next(name for name, lo, hi in SIZES if lo <= share < hi)


def evaluate_masks(names: list[str], preds, truths) -> tuple[list[dict], dict]:
    """Per-image rows and overall numbers for predicted vs true masks (any non-zero = person)."""
    rows, pooled = [], [0, 0, 0, 0]
    for name, pred, truth in zip(names, preds, truths):
        tp, fp, fn, tn = confusion(pred > 0, truth)          # truth as labelled: unknown pixels not counted
        pooled = [a + b for a, b in zip(pooled, (tp, fp, fn, tn))]
        rows.append({"name": name, "width": truth.shape[1], "height": truth.shape[0], "truth_pixels": tp + fn,
                     "pred_pixels": tp + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                     "size": size_bucket(tp + fn, tp + fp + fn + tn), **scores(tp, fp, fn, tn)})
    with_people = [r for r in rows if r["truth_pixels"]]
    without = [r for r in rows if not r["truth_pixels"]]
    overall = {"images": len(rows), "images_with_people": len(with_people), "person_free_images": len(without)}
    for key in METRICS:
        overall[f"mean_{key}"] = sum(r[key] for r in rows) / len(rows) if rows else float("nan")
    # IoU over photos that show people, and false person pixels on photos that show none
    overall["mean_iou_with_people"] = (sum(r["iou"] for r in with_people) / len(with_people)
                                       if with_people else float("nan"))
    for bucket, _, _ in SIZES:
        these = [r["iou"] for r in with_people if r["size"] == bucket]
        overall[f"mean_iou_{bucket}"] = sum(these) / len(these) if these else float("nan")
        overall[f"images_{bucket}"] = len(these)
    overall["mean_false_person_fraction_person_free"] = (
        sum(r["fp"] / max(1, r["fp"] + r["tn"]) for r in without) / len(without) if without else float("nan"))
    # pooled: person pixels marked on all person-free photos together / all their pixels
    free_fp, free_px = sum(r["fp"] for r in without), sum(r["fp"] + r["tn"] for r in without)
    overall["false_person_pixels_person_free"] = free_fp / free_px if free_px else float("nan")
    overall.update({f"pooled_{k}": v for k, v in scores(*pooled).items()})
    overall.update(dict(zip(("tp", "fp", "fn", "tn"), pooled)))
    return rows, overall


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def _tile(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, caption: str, size: int) -> np.ndarray:
    """The photo with predicted person pixels tinted red, the true outline in green, unknown pixels
    hatched grey, fitted into a size x size tile with a caption."""
    h, w = truth.shape
    s = size / max(h, w)
    th, tw = max(1, round(h * s)), max(1, round(w * s))
    img = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32)
    p = cv2.resize((pred > 0).astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
    t = cv2.resize((truth == 1).astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
    u = cv2.resize((truth == UNKNOWN).astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
    img[p] = img[p] * 0.45 + np.array([255, 0, 0]) * 0.55
    hatch = u & ((np.add.outer(np.arange(th), np.arange(tw)) // 3) % 2 == 0)
    img[hatch] = 128
    out = np.full((size + 18, size, 3), 24, np.uint8)
    out[:th, :tw] = np.clip(img, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(t, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out[:th, :tw], contours, -1, (0, 255, 0), 1)
    cv2.putText(out, caption[:34], (2, size + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (235, 235, 235), 1, cv2.LINE_AA)
    return out


def contact_sheet(path: str | os.PathLike, samples: SampleSet, preds, rows: list[dict], count: int = 24,
                  size: int = 200, columns: int = 6) -> list[str]:
    """Write a PNG of the `count` worst images (lowest IoU; on person-free photos, most false pixels) with
    their masks (red: predicted person, green outline: truth, grey hatching: unknown); return their names."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["iou"], -rows[i]["fp"]))[:count]
    tiles = [_tile(samples.images[i], preds[i], samples.masks[i],
                   f"{rows[i]['name']} IoU {rows[i]['iou']:.2f}", size) for i in order]
    if not tiles:
        return []
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return [rows[i]["name"] for i in order]


def evaluate_segmenter(segmenter: Segmenter, samples: SampleSet,
                       sheet: str | os.PathLike | None = None) -> tuple[list[dict], dict]:
    """Run the Segmenter over every image of `samples` and score it against the masks; `sheet`: also
    write a contact sheet of the worst images there."""
    preds = [r.mask for r in segmenter.segment(samples.images)]
    rows, overall = evaluate_masks(samples.names, preds, samples.masks)
    if sheet:
        overall["worst"] = contact_sheet(sheet, samples, preds, rows)
    return rows, overall


def evaluate(weights: str | None, data: str | os.PathLike, out_csv: str | os.PathLike | None = None,
             out_json: str | os.PathLike | None = None, *, device: str = "auto", precision: str = "auto",
             batch_size: int = 16, threshold: float | None = None,
             coco_images: str | os.PathLike | None = None, sheet: str | os.PathLike | None = None) -> dict:
    """Score `weights` (None: the shipped default) on a labelled folder, COCO file or packed .npz."""
    segmenter = Segmenter.from_checkpoint(weights, device=device, precision=precision,
                                          batch_size=batch_size, threshold=threshold)
    rows, overall = evaluate_segmenter(segmenter, load_samples(data, coco_images), sheet)
    overall = {"weights": weights or "default", "model": segmenter.config.tag, "weights_sha256": segmenter.weights_sha256,
               "data": str(data), "threshold": segmenter.threshold, **overall}
    if out_csv:
        write_csv(out_csv, rows)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(overall, indent=2) + "\n")
    return overall
