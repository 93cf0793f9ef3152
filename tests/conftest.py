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


@pytest.fixture(scope="session")
def busy_weights(tmp_path_factory) -> str:
    """A random small U-Net whose last layer is rescaled so that its logits spread around 0.

    A randomly initialised model calls every pixel person (p ~ 0.59 everywhere); tests that compare
    masks need masks with edges, which this one gives: 30-60 % person, varying with the content.
    """
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = build_unet(base_width=4, depth=2, input_height=32, input_width=48).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (8, 3, 32, 48)).astype(np.float32))
    with torch.no_grad():
        logits = model(x)
        scale, centre = 3.0 / logits.std(), logits.median()
        model.head.weight.mul_(scale)
        model.head.bias.sub_(centre).mul_(scale)
    path = tmp_path_factory.mktemp("weights") / "busy.safetensors"
    save_checkpoint(path, model)
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
def ray_local(s3_server):
    """One embedded local Ray for the whole session (starting Ray costs seconds).

    Ray workers inherit the environment at `ray.init`, so the S3 test server's endpoint and
    credentials are set first, whichever test happens to start Ray.

    Workers inherit the fault-injection variable: a unit whose uri contains `__poison__`
    kills its worker process, as a segfaulting decoder would.
    """
    import ray

    from humanseg_batch.jobs.ray_executor import loopback_only

    os.environ["HUMANSEG_FAULT_CRASH_URI"] = "__poison__"
    loopback_only()          # as the product's embedded Ray: every component on 127.0.0.1
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def start_moto(log_path: Path):
    """moto's S3 server on a port the OS picks (-p 0), read back from the line it prints once bound:
    no window in which another process could take a port chosen in advance. Fails the session loudly
    (with the server's output) if it does not come up."""
    import re
    import subprocess
    import sys
    import time
    import urllib.request

    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline, endpoint = time.time() + 60, None
    while time.time() < deadline and proc.poll() is None:
        bound = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if bound:
            endpoint = bound.group(1)
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                return proc, endpoint
            except Exception:  # noqa: BLE001 - bound but not answering yet
                pass
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=10)
    pytest.fail(f"the moto S3 server did not start (endpoint {endpoint}, exit {proc.returncode}):\n"
                f"{log_path.read_text()[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible HTTP server (moto's server mode) on 127.0.0.1.

    HUMANSEG_TEST_S3_ENDPOINT, if set, names one already running; otherwise this fixture starts
    its own. Yields the endpoint url; AWS test credentials are set in the environment.
    """
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    endpoint = os.environ.get("HUMANSEG_TEST_S3_ENDPOINT")
    proc = None
    if not endpoint:
        proc, endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    os.environ["HUMANSEG_S3_ENDPOINT_URL"] = endpoint
    yield endpoint
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the test server; yields (s3fs filesystem, bucket name)."""
    import re

    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    fs.mkdir(name)
    yield fs, name
    fs.rm(name, recursive=True)
