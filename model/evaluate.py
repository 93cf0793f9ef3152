"""Evaluating a checkpoint on a labelled set with the Segmenter, at each image's own size.

`evaluate(weights, data, out_csv, out_json)` writes one CSV row per image and returns (and
optionally writes) the overall numbers: per-image means and pooled pixel counts.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .data import SampleSet, load_samples
from .losses import confusion, scores
from .segmenter import Segmenter

METRICS = ("iou", "dice", "precision", "recall", "fpr")
CSV_FIELDS = ("name", "width", "height", "truth_pixels", "pred_pixels", "tp", "fp", "fn", "tn") + METRICS


def evaluate_masks(names: list[str], preds, truths) -> tuple[list[dict], dict]:
    """Per-image rows and overall numbers for predicted vs true masks (any non-zero = person)."""
    rows, pooled = [], [0, 0, 0, 0]
    for name, pred, truth in zip(names, preds, truths):
        tp, fp, fn, tn = confusion(pred > 0, truth > 0)
        pooled = [a + b for a, b in zip(pooled, (tp, fp, fn, tn))]
        rows.append({"name": name, "width": truth.shape[1], "height": truth.shape[0], "truth_pixels": tp + fn,
                     "pred_pixels": tp + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn, **scores(tp, fp, fn, tn)})
    with_people = [r for r in rows if r["truth_pixels"]]
    without = [r for r in rows if not r["truth_pixels"]]
    overall = {"images": len(rows), "images_with_people": len(with_people), "person_free_images": len(without)}
    for key in METRICS:
        overall[f"mean_{key}"] = sum(r[key] for r in rows) / len(rows) if rows else float("nan")
    # IoU over photos that show people, and false person pixels on photos that show none
    overall["mean_iou_with_people"] = (sum(r["iou"] for r in with_people) / len(with_people)
                                       if with_people else float("nan"))
    overall["mean_false_person_fraction_person_free"] = (
        sum(r["fp"] / (r["width"] * r["height"]) for r in without) / len(without) if without else float("nan"))
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


def evaluate_segmenter(segmenter: Segmenter, samples: SampleSet) -> tuple[list[dict], dict]:
    """Run the Segmenter over every image of `samples` and score it against the masks."""
    preds = [r.mask for r in segmenter.segment(samples.images)]
    return evaluate_masks(samples.names, preds, samples.masks)


def evaluate(weights: str | None, data: str | os.PathLike, out_csv: str | os.PathLike | None = None,
             out_json: str | os.PathLike | None = None, *, device: str = "auto", precision: str = "auto",
             batch_size: int = 16, threshold: float | None = None,
             coco_images: str | os.PathLike | None = None) -> dict:
    """Score `weights` (None: the shipped default) on a labelled folder, COCO file or packed .npz."""
    segmenter = Segmenter.from_checkpoint(weights, device=device, precision=precision,
                                          batch_size=batch_size, threshold=threshold)
    rows, overall = evaluate_segmenter(segmenter, load_samples(data, coco_images))
    overall = {"weights": weights or "default", "weights_sha256": segmenter.weights_sha256,
               "data": str(data), "threshold": segmenter.threshold, **overall}
    if out_csv:
        write_csv(out_csv, rows)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(overall, indent=2) + "\n")
    return overall
