"""Which executor runs a job when none is named: in-process for small local jobs, Ray otherwise."""
from __future__ import annotations

import os
import sys

from humanseg_batch.pipeline.decode import DecodeError, estimate_frames
from humanseg_batch.pipeline.manifest import Manifest

# Up to this many planned frames the in-process executor finishes first on a 2-core machine: vtest.avi
# (795 frames) took 26 s with an embedded Ray (6-9 s of Ray start-up, a worker per task) and 9.5-14.5 s
# in-process (busy machine). Past it, Ray's start-up pays back on machines with more cores (decode
# tasks side by side), and Ray retries units whose worker died.
SMALL_JOB_FRAMES = 1500


def choose_executor(executor: str, address: str | None, manifest: Manifest,
                    endpoint_url: str | None = None) -> tuple[str, str]:
    """(executor, why) for `--executor auto`; a named executor is kept."""
    if executor != "auto":
        return executor, "--executor"
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray", "auto: a Ray cluster address is given"
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return "ray", "auto: this process is already connected to Ray"
    frames = planned_frames(manifest, endpoint_url, SMALL_JOB_FRAMES)
    if frames is None:
        return "ray", f"auto: more than {SMALL_JOB_FRAMES} frames"
    return "local", f"auto: about {frames} frame(s), no cluster; --executor ray to use Ray"


def planned_frames(manifest: Manifest, endpoint_url: str | None, limit: int) -> int | None:
    """Frames the manifest asks for (an image is one; a video's count from its header, sampling
    ignored), or None as soon as the count passes `limit` or a video's length is unknown."""
    if len(manifest) > limit:
        return None
    total = 0
    items = manifest.items
    for uri, media_type, error in zip(items.column("uri").to_pylist(), items.column("media_type").to_pylist(),
                                      items.column("error").to_pylist()):
        if error or media_type == "image":
            total += 1
        else:
            try:
                frames = estimate_frames(uri, endpoint_url)
            except (DecodeError, OSError, ValueError):
                frames = 1          # unreadable: it becomes an error row, no work
            if frames is None:
                return None
            total += frames
        if total > limit:
            return None
    return total
