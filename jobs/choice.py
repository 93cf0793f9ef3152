"""Which executor runs a job when none is named: in-process for small local jobs, Ray otherwise."""
from __future__ import annotations

import os
import sys

from humanseg_batch.pipeline.decode import DecodeError, estimate_frames
import numpy as np

from humanseg_batch.pipeline.planner import Plan

# Up to this many planned frames the in-process executor finishes first on a 2-core machine: vtest.avi
# (795 frames) took 26 s with an embedded Ray (6-9 s of Ray start-up, a worker per task) and 9.5-14.5 s
# in-process (busy machine). Past it, Ray's start-up pays back on machines with more cores (decode
# tasks side by side), and Ray retries units whose worker died.
SMALL_JOB_FRAMES = 1500


def choose_executor(executor: str, address: str | None, plan: Plan, pending: np.ndarray,
                    endpoint_url: str | None = None) -> tuple[str, str]:
    """(executor, why) for `--executor auto`; a named executor is kept."""
    if executor != "auto":
        return executor, "--executor"
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray", "auto: a Ray cluster address is given"
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return "ray", "auto: this process is already connected to Ray"
    frames = planned_frames(plan, pending, endpoint_url, SMALL_JOB_FRAMES)
    if frames is None:
        return "ray", f"auto: more than {SMALL_JOB_FRAMES} frames"
    return "local", f"auto: about {frames} frame(s), no cluster; --executor ray to use Ray"


def planned_frames(plan: Plan, pending: np.ndarray, endpoint_url: str | None, limit: int) -> int | None:
    """Frames the pending shards ask for (an image is one; a video's count from its header, sampling
    ignored), or None as soon as the count passes `limit` or a video's length is unknown."""
    if plan.count[pending].sum() > limit:
        return None
    total = 0
    for item in (i for shard in plan.shards(pending) for i in shard.items):
        if item.error or item.media_type == "image":
            total += 1
        else:
            try:
                frames = estimate_frames(item.uri, endpoint_url)
            except (DecodeError, OSError, ValueError):
                frames = 1          # unreadable: it becomes an error row, no work
            if frames is None:
                return None
            total += frames
        if total > limit:
            return None
    return total
