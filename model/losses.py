"""Training loss (BCE + soft Dice) and the mask metrics shared by training and evaluation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """BCE for per-pixel calibration plus soft Dice (per image) for the region overlap."""
    logits = logits.float()
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (prob * t).sum(1)
    dice = 1 - (2 * inter + eps) / (prob.sum(1) + t.sum(1) + eps)
    return bce_weight * bce + dice_weight * dice.mean()


def confusion(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of two boolean-like masks."""
    if isinstance(pred, torch.Tensor):
        p, t = pred.bool(), truth.bool()
        tp = int((p & t).sum()); fp = int((p & ~t).sum()); fn = int((~p & t).sum())
        return tp, fp, fn, p.numel() - tp - fp - fn
    p, t = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    tp = int(np.count_nonzero(p & t)); fp = int(np.count_nonzero(p & ~t)); fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, p.size - tp - fp - fn


def scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """IoU, Dice, precision, recall and false-positive rate from pixel counts.

    Empty denominators follow "nothing to get wrong, nothing got wrong": an empty truth with an
    empty prediction scores IoU = Dice = precision = recall = 1."""
    def ratio(num: int, den: int) -> float:
        return float(num) / den if den else 1.0
    return {
        "iou": ratio(tp, tp + fp + fn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "fpr": float(fp) / (fp + tn) if fp + tn else 0.0,
    }
