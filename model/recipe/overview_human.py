"""Contact sheet of eval images with their masks tinted, to check labels line up by eye.

    .venv/bin/python model/recipe/overview_human.py [--count 24]

Person pixels are tinted red, unknown (128) pixels yellow. Writes .cache/human/overview.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

HUMAN = Path(__file__).resolve().parent / ".cache" / "human"
TILE = 220


def tinted(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    for value, colour in [(255, (0, 0, 255)), (128, (0, 255, 255))]:
        sel = mask == value
        out[sel] = 0.45 * out[sel] + 0.55 * np.array(colour, np.float32)
    return out.astype(np.uint8)


def tile(name: str, split: Path) -> np.ndarray:
    image = cv2.imread(str(split / "images" / f"{name}.jpg"))
    mask = cv2.imread(str(split / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    view = tinted(image, mask)
    scale = TILE / max(view.shape[:2])
    view = cv2.resize(view, (round(view.shape[1] * scale), round(view.shape[0] * scale)))
    canvas = np.full((TILE + 16, TILE, 3), 255, np.uint8)
    canvas[16:16 + view.shape[0], :view.shape[1]] = view
    cv2.putText(canvas, name, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    return canvas


def pick(names: list[str], count: int) -> list[str]:
    """Evenly spread over the sorted names, so every source shows up."""
    step = max(1, len(names) / count)
    return [names[int(i * step)] for i in range(min(count, len(names)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--split", default="eval")
    args = parser.parse_args()
    split = HUMAN / args.split
    names = sorted(p.stem for p in (split / "images").glob("*.jpg"))
    tiles = [tile(n, split) for n in pick(names, args.count)]
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % 6)
    rows = [np.hstack(tiles[i:i + 6]) for i in range(0, len(tiles), 6)]
    cv2.imwrite(str(HUMAN / "overview.png"), np.vstack(rows))


if __name__ == "__main__":
    main()
