"""Tiny real media for tests: cv2-written images, PyAV-encoded videos, CSV manifests."""
from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def make_image(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (max(1, w // 6), max(1, h // 3)), 0, 0, 360, (200, 150, 120), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def draw_frame(i: int, h: int, w: int) -> np.ndarray:
    """Frame i of every `make_video` video (RGB): red level i*7 (mod 255), a bright bar at column i*3,
    and i in binary along the bottom edge (8x8 white blocks = 1 bits, lowest bit left), which lossy
    codecs keep readable: see `frame_number`."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = (i * 7) % 255
    x = (i * 3) % max(1, w - 10)
    img[h // 4: 3 * h // 4, x:x + 10] = 220
    assert i < 2 ** (w // 8), "video too long for its width's frame-number bits"
    for bit in range(w // 8):
        if i >> bit & 1:
            img[h - 8:, 8 * bit:8 * bit + 8] = 255
    return img


def frame_number(rgb: np.ndarray) -> int:
    """The number `draw_frame` wrote into a decoded frame (the centres of its bottom-edge blocks)."""
    h, w = rgb.shape[:2]
    return sum(1 << bit for bit in range(w // 8) if rgb[h - 6:h - 2, 8 * bit + 2:8 * bit + 6, 1].mean() > 128)


def make_video(path: Path, frames: int = 40, fps: int = 10, size: tuple[int, int] = (64, 48), gop: int = 12,
               start_pts: int = 0, pts_list: list[int] | None = None, time_base: Fraction | None = None,
               codec: str = "mpeg4") -> Path:
    """Encode a real video with PyAV. `pts_list` (in `time_base`) makes a variable-frame-rate stream."""
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, h, w), format="rgb24")
            frame.pts = pts_list[i] if pts_list is not None else start_pts + i
            if time_base is not None:
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(out) -> list[dict]:
    """All committed rows of an output folder, sorted by (id, frame_index)."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(Path(out) / "metadata"), format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["id"], -1 if r["frame_index"] is None else r["frame_index"]))


def output_files(out) -> set[str]:
    root = Path(out)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def decode_coco_rle(text: str, h: int, w: int) -> np.ndarray:
    """Independent decoder of COCO's compressed counts (as documented for the COCO format)."""
    counts, p = [], 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat, value, pos = np.zeros(h * w, np.uint8), 0, 0
    for n in counts:
        flat[pos:pos + n] = value
        pos += n
        value ^= 1
    assert pos == h * w
    return flat.reshape((w, h)).T * 255
