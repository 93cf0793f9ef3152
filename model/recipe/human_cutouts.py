"""Which labelled people make clean cut-outs for composites, and the RGBA crop itself."""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA = 1500        # px: smaller people give cut-outs too coarse to paste at large scales
MIN_HEIGHT = 60        # px of box height
MAIN_PART = 0.9        # share of the area in the largest piece; less hints at an occluder
MAX_BORDER_CONTACT = 0.5  # share of the person's height (width) lying on a side (top) border
NEAR_OTHERS = 0.03     # other people / unknown pixels next to the person, as a share of its area


def border_sides(person: np.ndarray) -> str:
    """Image borders the person touches: T, B, L, R (cut there by the frame)."""
    sides = [("T", person[0].any()), ("B", person[-1].any()),
             ("L", person[:, 0].any()), ("R", person[:, -1].any())]
    return "".join(side for side, cut in sides if cut)


def heavily_cut(person: np.ndarray) -> bool:
    """Touching the left, right or top border along most of its extent there: mostly outside."""
    ys, xs = np.nonzero(person)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return bool(max(person[:, 0].sum(), person[:, -1].sum()) > MAX_BORDER_CONTACT * height
                or person[0].sum() > MAX_BORDER_CONTACT * width)


def cutout_name(scene: str, index: int, person: np.ndarray, mask: np.ndarray) -> str | None:
    """`scene_pN[_cutSIDES]` for a clean single person, None for one to skip."""
    area = int(person.sum())
    ys, _ = np.nonzero(person)
    if area < MIN_AREA or ys.max() - ys.min() + 1 < MIN_HEIGHT:
        return None
    _, labels, stats, _ = cv2.connectedComponentsWithStats(person.astype(np.uint8), connectivity=8)
    if stats[1:, cv2.CC_STAT_AREA].max() < MAIN_PART * area:
        return None
    # Another person or a crowd right next to this one: likely overlapping, edges unsure.
    ring = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    if (ring & (mask > 0) & ~person).sum() > NEAR_OTHERS * area:
        return None
    sides = border_sides(person)
    if len(sides) >= 3 or heavily_cut(person):  # a slice of a person is no person to paste
        return None
    return f"{scene}_p{index}" + (f"_cut{sides}" if sides else "")


def cutout_rgba(image: np.ndarray, person: np.ndarray) -> np.ndarray:
    """BGRA crop of the person's box: alpha 255 inside the person, 0 outside."""
    ys, xs = np.nonzero(person)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    inside = person[y0:y1, x0:x1]
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    # Colour outside the person is never seen after pasting; flat black shrinks the PNG ~3x.
    colour = np.where(inside[..., None], image[y0:y1, x0:x1], 0).astype(np.uint8)
    return np.dstack([colour, alpha])
