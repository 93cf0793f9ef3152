import io
import pickle

import numpy as np
import pytest
import torch

from humanseg_batch.model import CheckpointError, Segmenter, UNetConfig, build_unet, load_checkpoint, save_checkpoint
from humanseg_batch.model.checkpoint import read_checkpoint


@pytest.mark.parametrize("depth,width,h,w", [(1, 4, 16, 24), (2, 4, 32, 48), (3, 8, 64, 64), (4, 2, 96, 128)])
def test_unet_output_is_one_logit_per_pixel(depth, width, h, w):
    model = build_unet(base_width=width, depth=depth, input_height=h, input_width=w).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 1, h, w)
    # the skip connections are real: level i has base_width * 2**i channels
    assert [d[1][0].out_channels for d in model.downs] == [width * 2 ** i for i in range(1, depth + 1)]


def test_strided_stem_runs_the_unet_at_half_resolution_and_returns_full_size_logits():
    model = build_unet(base_width=4, depth=3, input_height=64, input_width=96, stem_stride=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 1, 64, 96)
        assert model.stem(model.embed(torch.randn(1, 3, 64, 96))).shape == (1, 4, 32, 48)
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(depth=4, input_height=48, input_width=64, stem_stride=2)


def test_unet_takes_other_input_channels_and_odd_sizes():
    model = build_unet(in_channels=1, base_width=4, depth=2, input_height=32, input_width=32, upsample="bilinear")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 30, 34)).shape == (1, 1, 30, 34)


def test_config_rejects_sizes_not_divisible_by_depth():
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(depth=3, input_height=20, input_width=32)


def test_checkpoint_round_trip_keeps_weights_config_and_hash(tmp_path):
    model = build_unet(base_width=4, depth=2, input_height=32, input_width=48, threshold=0.4)
    digest = save_checkpoint(tmp_path / "m.safetensors", model, extra={"note": "test"})
    loaded, info = load_checkpoint(tmp_path / "m.safetensors")
    assert info["sha256"] == digest and info["config"] == model.config and info["extra"] == {"note": "test"}
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_tampered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_unet(base_width=4, depth=2, input_height=32, input_width=48))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF                      # flip bits inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified or corrupted"):
        load_checkpoint(path)


def test_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Boom()}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    raw = pickle.dumps({"state": 1}, protocol=2)
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_segmenter_returns_masks_at_original_sizes_for_mixed_batches(tiny_weights, precision):
    seg = Segmenter.from_checkpoint(tiny_weights, device="cpu", precision=precision, batch_size=3)
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (100, 30), (7, 9), (480, 640), (48, 64)]
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    results = seg.segment(frames)
    assert [r.mask.shape for r in results] == sizes
    for r in results:
        assert r.mask.dtype == np.uint8 and set(np.unique(r.mask)) <= {0, 255}
        assert 0.0 <= r.person_fraction <= 1.0 and 0.5 <= r.confidence <= 1.0
        assert (r.bbox is None) == (r.person_fraction == 0)
    assert seg.precision == precision


def test_segmenter_threshold_and_batch_split_agree_with_one_big_batch(tiny_weights):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(7)]
    a = Segmenter.from_checkpoint(tiny_weights, device="cpu", precision="fp32", batch_size=2).segment(frames)
    b = Segmenter.from_checkpoint(tiny_weights, device="cpu", precision="fp32", batch_size=8).segment(frames)
    for x, y in zip(a, b):
        assert np.array_equal(x.mask, y.mask)
    low = Segmenter.from_checkpoint(tiny_weights, device="cpu", precision="fp32", threshold=0.01).segment(frames[:1])
    high = Segmenter.from_checkpoint(tiny_weights, device="cpu", precision="fp32", threshold=0.99).segment(frames[:1])
    assert low[0].person_fraction >= high[0].person_fraction
