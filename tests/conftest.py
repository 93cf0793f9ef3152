"""Shared fixtures: a tiny random model and a small set of real media files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from humanseg_batch.model import build_unet, save_checkpoint
from mediagen import make_image, make_video

# Test clusters listen on 127.0.0.1 only; token auth would need a token shared by every process.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """A randomly initialised small U-Net checkpoint (tests check plumbing, not quality)."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(path, build_unet(base_width=4, depth=2, input_height=32, input_width=48))
    return str(path)


@pytest.fixture
def media(tmp_path) -> dict[str, Path]:
    """A few images of different sizes and two videos spanning several 1-second chunks."""
    root = tmp_path / "media"
    return {
        "a": make_image(root / "a.png", 48, 64, 1),
        "b": make_image(root / "b.jpg", 60, 40, 2),
        "c": make_image(root / "sub dir" / "c é.png", 33, 77, 3),
        "v1": make_video(root / "v1.avi", frames=35, fps=10),
        "v2": make_video(root / "v2.mkv", frames=24, fps=8, size=(48, 32)),
    }


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (starting Ray costs seconds).

    Workers inherit the fault-injection variable: a unit whose uri contains `__poison__`
    kills its worker process, as a segfaulting decoder would.
    """
    import ray

    os.environ["HUMANSEG_FAULT_CRASH_URI"] = "__poison__"
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
