"""Training loss (BCE + soft Dice) and the mask metrics shared by training and evaluation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


from .data import UNKNOWN   # label value of pixels nobody labelled: no loss, not scored


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """BCE for per-pixel calibration plus soft Dice (per image) for the region overlap; pixels labelled
    UNKNOWN count in neither (an unlabelled background person must not be taught as background)."""
    logits = logits.float()
    known = (target != UNKNOWN).float()
    target = (target == 1).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=known, reduction="sum") / known.sum().clamp(min=1)
    prob = (torch.sigmoid(logits) * known).flatten(1)
    t = target.flatten(1)
    inter = (prob * t).sum(1)
    dice = 1 - (2 * inter + eps) / (prob.sum(1) + t.sum(1) + eps)
    return bce_weight * bce + dice_weight * dice.mean()


def confusion(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of a boolean-like prediction against a truth mask (non-zero = person,
    except the value UNKNOWN, whose pixels are not counted at all)."""
    if isinstance(pred, torch.Tensor):
        known = truth != UNKNOWN
        p, t = pred.bool() & known, truth.bool() & known
        tp = int((p & t).sum()); fp = int((p & ~t).sum()); fn = int((~p & t).sum())
        return tp, fp, fn, int(known.sum()) - tp - fp - fn
    truth = np.asarray(truth)
    known = truth != UNKNOWN
    p, t = np.asarray(pred).astype(bool), truth.astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    p, t = p & known, t & known
    tp = int(np.count_nonzero(p & t)); fp = int(np.count_nonzero(p & ~t)); fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, int(np.count_nonzero(known)) - tp - fp - fn


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
