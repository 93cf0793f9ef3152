"""Labels for a static-camera street clip by background subtraction: the per-pixel median of the clip
is the empty street, and what differs from it by more than 40 (max over RGB), cleaned by a 3x3 opening
and a 7x7 closing, is a walker. Blobs at least 30 px tall are person (255); smaller moving blobs and a
3-px ring around every blob are unknown (128): a far walker or a blob's edge is not taught either way.
Everything else is background. The clip is examples/media/vtest.avi (OpenCV sample data, see
examples/media/LICENSES), every 8th frame:

    .venv/bin/python model/recipe/street_labels.py      # -> .cache/street/train/{images,masks}
    .venv/bin/python model/recipe/train_tiers.py pack --extra model/recipe/.cache/street/train ...
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
CLIP = HERE.parents[1] / "examples" / "media" / "vtest.avi"


def frames(path: Path, every: int) -> list[np.ndarray]:
    cap, out, i = cv2.VideoCapture(str(path)), [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            return out
        if i % every == 0:
            out.append(bgr)
        i += 1


def street_label(frame: np.ndarray, street: np.ndarray) -> np.ndarray:
    diff = np.abs(frame.astype(np.int16) - street.astype(np.int16)).max(axis=2)
    fg = (diff > 40).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    walker = np.zeros(n, bool)
    walker[1:] = (stats[1:, cv2.CC_STAT_HEIGHT] >= 30) & (stats[1:, cv2.CC_STAT_AREA] >= 300)
    out = np.where(cv2.dilate(fg, np.ones((7, 7), np.uint8)) > 0, 128, 0).astype(np.uint8)
    out[walker[labels]] = 255
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / ".cache/street/train"))
    ap.add_argument("--every", type=int, default=8)
    args = ap.parse_args()
    clip = frames(CLIP, args.every)
    street = np.median(np.stack(clip), axis=0).astype(np.uint8)
    out = Path(args.out)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip):
        # one group for the whole clip (name prefix before "__"): its frames stay on one side of a split
        cv2.imwrite(str(out / "images" / f"vtest__{i:03d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(out / "masks" / f"vtest__{i:03d}.png"), street_label(frame, street))
    print(f"{out}: {len(clip)} frames")


if __name__ == "__main__":
    main()
