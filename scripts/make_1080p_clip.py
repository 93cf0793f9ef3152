"""A 1080p H.264 test clip for `humanseg-batch bench --video`: examples/media/vtest.avi (people walking,
768x576) scaled to 1920x1080 and encoded with libx264 at its defaults (yuv420p, CRF 23), as a camera or
phone export would be. Made on demand (none is shipped: 1080p video is large).

    .venv/bin/python scripts/make_1080p_clip.py /tmp/vtest-1080p.mp4 [--frames 300] [--size 1920x1080]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import av

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "media" / "vtest.avi"


def make_clip(out: str, frames: int = 300, size: tuple[int, int] = (1920, 1080), source: str = str(EXAMPLE)) -> int:
    """Write `frames` frames of `source` (looped) scaled to `size`; return the number written."""
    w, h = size
    written = 0
    with av.open(out, "w") as dst:
        stream = dst.add_stream("libx264", rate=25, options={"crf": "23", "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        while written < frames:
            with av.open(source) as src:
                for frame in src.decode(video=0):
                    big = frame.reformat(width=w, height=h, format="yuv420p")
                    big.pts = written
                    dst.mux(stream.encode(big))
                    written += 1
                    if written == frames:
                        break
        dst.mux(stream.encode())
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="1920x1080", help="WxH")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    print(f"{args.out}: {make_clip(args.out, args.frames, (w, h))} frames at {w}x{h}")


if __name__ == "__main__":
    main()
