"""The shipped weights (default and hires): loadable, within the size budget, and still segmenting the bundled samples.

A regression guard, not a quality claim: astronaut.png and grace_hopper.jpg were in the training pack;
fruits.jpg is a held-out person-free photo. Held-out quality is measured by model/recipe/measure.py."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from humanseg_batch.model import Segmenter, default_weights_path, load_checkpoint

MEDIA = Path(__file__).resolve().parents[2] / "examples" / "media"


@pytest.fixture(scope="module", params=["default", "hires"])
def segmenter(request):
    torch.set_num_threads(1)
    return Segmenter.from_checkpoint(request.param, device="cpu", precision="fp32")


def test_default_weights_are_the_documented_model():
    path = default_weights_path()
    assert path.stat().st_size < 10 * 2 ** 20
    model, info = load_checkpoint(None)
    assert info["config"].tag == "unet-mobilenetv2-w8d4-128x96"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("name,low,high", [("astronaut.png", 0.3, 0.7), ("grace_hopper.jpg", 0.4, 0.8),
                                           ("fruits.jpg", 0.0, 0.01)])
def test_default_weights_on_the_bundled_samples(segmenter, name, low, high):
    rgb = cv2.imread(str(MEDIA / name))[..., ::-1].copy()
    result = segmenter.segment([rgb])[0]
    assert low <= result.person_fraction <= high, result.person_fraction
    if high > 0.1:   # the person stands in the middle of the portrait, not along one edge
        x0, y0, x1, y1 = result.bbox
        assert x0 < rgb.shape[1] / 2 < x1 and y0 < rgb.shape[0] / 2 < y1


def test_shipped_models_by_name():
    from humanseg_batch.model.checkpoint import shipped_weights

    assert set(shipped_weights()) == {"default", "hires"}
    assert load_checkpoint("default")[1]["sha256"] == load_checkpoint(None)[1]["sha256"]
    hires = load_checkpoint("hires")[1]
    assert hires["config"].tag == "unet-mobilenetv2-w8d4-160x128"
    assert Path(hires["path"]).stat().st_size < 10 * 2 ** 20
