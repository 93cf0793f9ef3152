"""Training and inference feed the model the same tensors (model/preprocess.py)."""
from __future__ import annotations

import numpy as np
import torch

from humanseg_batch.model import Segmenter
from humanseg_batch.model.augment import letterbox
from humanseg_batch.model.preprocess import Normalise, autocast, letterbox_batch
from humanseg_batch.model.unet import build_unet


def frames_of_many_sizes() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 90), (48, 64), (200, 50), (7, 3))]


def test_letterbox_batch_is_the_training_letterbox_frame_by_frame():
    frames = frames_of_many_sizes()
    out = np.full((6, 48, 64, 3), 99, np.uint8)               # stale data in a reused buffer
    batch, sizes = letterbox_batch(frames, 48, 64, out=out)
    assert np.shares_memory(batch, out)
    for frame, image, size in zip(frames, batch, sizes):
        expected, _ = letterbox(frame, None, 48, 64)
        assert np.array_equal(image, expected)
        assert image[size[0]:].max(initial=0) == 0 and image[:, size[1]:].max(initial=0) == 0
    assert sizes == [(21, 64), (48, 64), (48, 12), (48, 21)]


def test_segmenter_probabilities_are_the_model_on_the_training_input():
    torch.manual_seed(0)
    model = build_unet(base_width=4, depth=2, input_height=48, input_width=64).eval()
    seg = Segmenter(model, device="cpu", precision="fp32", batch_size=3)
    frames = frames_of_many_sizes()
    batch, _ = letterbox_batch(frames, 48, 64)
    norm = Normalise(model.config, torch.device("cpu"))
    with torch.no_grad(), autocast(norm.device, "fp32"):
        x = norm(torch.from_numpy(batch))
        expected = torch.sigmoid(model(x))[:, 0].mul(255.0).round().to(torch.uint8).numpy()
    assert x.is_contiguous(memory_format=torch.channels_last)
    mean, std = np.array(model.config.mean), np.array(model.config.std)
    by_hand = ((batch / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert np.allclose(x.numpy(), by_hand, atol=1e-5)
    assert np.array_equal(seg.infer(batch), expected)


def test_autocast_runs_in_the_precision_asked_for():
    layer = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
