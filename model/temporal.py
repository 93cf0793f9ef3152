"""Steadier video masks: a centred three-frame average of person probabilities, and a flicker figure.

A frame's mask is decided from its own probabilities and its two neighbours' (weights 1/4, 1/2, 1/4), so
a pixel that one frame alone calls person (or background) against both neighbours no longer flips; the
window is centred, so a moving person's mask does not trail behind (no lag, one frame of delay). At the
ends of a chunk the missing neighbour is replaced by the frame itself.
"""
from __future__ import annotations

from typing import Any

import numpy as np

WEIGHTS = (1, 2, 1)     # previous, current, next; divided by 4


def _mix(prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    total = prev.astype(np.uint16) * WEIGHTS[0] + cur.astype(np.uint16) * WEIGHTS[1] + nxt.astype(np.uint16) * WEIGHTS[2]
    return ((total + 2) >> 2).astype(np.uint8)


class TemporalSmoother:
    """Feed the probability maps (uint8, model resolution) of consecutive frames with `push`; smoothed maps
    come out one frame later, with the payload they were pushed with; `flush` returns the last one."""

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._cur: tuple[np.ndarray, Any] | None = None

    def push(self, prob: np.ndarray, payload: Any = None) -> list[tuple[np.ndarray, Any]]:
        out = []
        if self._cur is not None:
            cur, cur_payload = self._cur
            if cur.shape == prob.shape:
                prev = self._prev if self._prev is not None else cur
                out.append((_mix(prev, cur, prob), cur_payload))
                self._prev = cur
            else:   # another frame size (another video in the same stream): a new run starts
                out = self.flush()
        self._cur = (prob, payload)
        return out

    def flush(self) -> list[tuple[np.ndarray, Any]]:
        out = []
        if self._cur is not None:
            cur, payload = self._cur
            out.append((_mix(self._prev if self._prev is not None else cur, cur, cur), payload))
        self._prev, self._cur = None, None
        return out


def smooth(probs: list[np.ndarray]) -> list[np.ndarray]:
    """`TemporalSmoother` over a whole sequence at once."""
    s = TemporalSmoother()
    out = [p for prob in probs for p, _ in s.push(prob)]
    return out + [p for p, _ in s.flush()]


def flicker(masks: list[np.ndarray]) -> float:
    """Share of pixels whose label (non-zero = person) flips between consecutive frames, averaged over the
    frame pairs; 0 for fewer than two frames."""
    if len(masks) < 2:
        return 0.0
    flips = [np.count_nonzero((a > 0) != (b > 0)) / a.size for a, b in zip(masks[:-1], masks[1:])]
    return float(np.mean(flips))
