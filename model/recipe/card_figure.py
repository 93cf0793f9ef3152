"""The model card's picture: both tiers on the bundled sample media (examples/media, licences there),
person pixels tinted red, so a reader sees what each tier finds and misses.

    .venv/bin/python model/recipe/card_figure.py docs/model-card.jpg
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from humanseg_batch.model.evaluate import _tile
from humanseg_batch.model.segmenter import Segmenter

MEDIA = Path(__file__).resolve().parents[2] / "examples" / "media"


def samples() -> list[tuple[str, np.ndarray]]:
    out = [(p.name, cv2.cvtColor(cv2.imread(str(MEDIA / p.name)), cv2.COLOR_BGR2RGB))
           for p in (MEDIA / "astronaut.png", MEDIA / "grace_hopper.jpg", MEDIA / "fruits.jpg")]
    cap = cv2.VideoCapture(str(MEDIA / "vtest.avi"))
    for index in range(0, 600, 200):            # three frames of the street: small, far walkers
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = cap.read()
        if ok:
            out.append((f"vtest.avi #{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def main() -> None:
    torch.set_num_threads(2)
    pictures = samples()
    rows = []
    for tier in ("fast", "quality"):
        seg = Segmenter.from_checkpoint(tier, device="cpu", precision="fp32")
        masks = [r.mask for r in seg.segment([img for _, img in pictures])]
        rows.append(np.hstack([_tile(img, m, np.zeros(m.shape, np.uint8), f"{tier}: {name}", 220)
                               for (name, img), m in zip(pictures, masks)]))
    cv2.imwrite(sys.argv[1], cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


if __name__ == "__main__":
    main()
