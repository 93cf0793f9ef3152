import json
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


def rewrite_metadata(path, **changes) -> None:
    """Edit a safetensors file's header metadata in place, leaving the tensors' bytes alone (None drops a key)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = dict(header["__metadata__"], **changes)
    header["__metadata__"] = {k: v for k, v in meta.items() if v is not None}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def test_tampered_config_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_unet(base_width=4, depth=2, input_height=32, input_width=48, threshold=0.5))
    config = json.loads(load_checkpoint(path)[1]["config"].to_json())
    rewrite_metadata(path, config=json.dumps(dict(config, threshold=0.9)))
    with pytest.raises(CheckpointError, match=r"config\+tensors does not match .* modified or corrupted"):
        load_checkpoint(path)
    rewrite_metadata(path, config=json.dumps(config), hashed="tensors")     # an unknown hash scope
    with pytest.raises(CheckpointError, match="unknown hash scope"):
        load_checkpoint(path)


def test_checkpoints_hashed_before_the_config_was_still_load(tmp_path):
    from humanseg_batch.model.checkpoint import tensors_hash

    path = tmp_path / "old.safetensors"
    model = build_unet(base_width=4, depth=2, input_height=32, input_width=48)
    save_checkpoint(path, model)
    # as files written up to 2026-12-01 are: the sha256 of the tensors alone, no "hashed" key
    legacy = tensors_hash(model.state_dict())
    rewrite_metadata(path, sha256=legacy, hashed=None)
    assert load_checkpoint(path)[1]["sha256"] == legacy
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
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
def test_segmenter_returns_masks_at_original_sizes_for_mixed_batches(busy_weights, precision):
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (100, 30), (7, 9), (480, 640), (48, 64)]
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    results = Segmenter.from_checkpoint(busy_weights, device="cpu", precision=precision, batch_size=3).segment(frames)
    assert [r.mask.shape for r in results] == sizes
    for r in results:
        assert r.mask.dtype == np.uint8 and set(np.unique(r.mask)) <= {0, 255}
        assert 0.0 <= r.person_fraction <= 1.0 and 0.5 <= r.confidence <= 1.0
        assert (r.bbox is None) == (r.person_fraction == 0)
    # the precision is really used (the numbers move a little), and it changes few mask pixels
    exact = Segmenter.from_checkpoint(busy_weights, device="cpu", precision="fp32", batch_size=3).segment(frames)
    moved = [(r.confidence != e.confidence, (r.mask != e.mask).mean()) for r, e in zip(results, exact)]
    assert any(m for m, _ in moved) == (precision != "fp32")
    assert max(share for _, share in moved) < 0.01


def test_segmenter_threshold_and_batch_split_agree_with_one_big_batch(busy_weights):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(7)]
    a = Segmenter.from_checkpoint(busy_weights, device="cpu", precision="fp32", batch_size=2).segment(frames)
    b = Segmenter.from_checkpoint(busy_weights, device="cpu", precision="fp32", batch_size=8).segment(frames)
    for x, y in zip(a, b):
        assert np.array_equal(x.mask, y.mask)
    fractions = [Segmenter.from_checkpoint(busy_weights, device="cpu", precision="fp32", threshold=t)
                 .segment(frames[:1])[0].person_fraction for t in (0.1, 0.5, 0.9)]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] > 0.8 and fractions[2] < 0.2, fractions
    assert fractions[1] == a[0].person_fraction                     # 0.5 is this checkpoint's own threshold


MBV2_CHANNELS = [16, 24, 32, 96, 320]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_mobilenetv2_encoder_taps_skips_at_each_stride_and_returns_full_size_logits(depth):
    model = build_unet(encoder="mobilenetv2", depth=depth, base_width=4, input_height=64, input_width=96).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        taps = model.encoder(x)
        assert model(x).shape == (2, 1, 64, 96)
    assert [t.shape[1] for t in taps] == MBV2_CHANNELS[:depth]
    assert [t.shape[-2:] for t in taps] == [(64 // 2 ** (i + 1), 96 // 2 ** (i + 1)) for i in range(depth)]
    # the expansive path: one step per tap above the deepest, base_width * 2**level channels
    assert [up.conv[3].out_channels for up in model.ups] == [4 * 2 ** j for j in reversed(range(depth - 1))]


def test_mobilenetv2_config_limits():
    with pytest.raises(ValueError, match="depth 1..5"):
        UNetConfig(encoder="mobilenetv2", depth=6, input_height=64, input_width=64)
    with pytest.raises(ValueError, match="stem_stride 1"):
        UNetConfig(encoder="mobilenetv2", depth=2, stem_stride=2, input_height=64, input_width=64)
    with pytest.raises(ValueError, match="encoder must be"):
        UNetConfig(encoder="resnet")


def test_mobilenetv2_checkpoint_round_trip_and_old_configs_default_to_the_paper_encoder(tmp_path):
    model = build_unet(encoder="mobilenetv2", depth=3, base_width=4, input_height=32, input_width=48).eval()
    save_checkpoint(tmp_path / "m.safetensors", model)
    loaded, info = load_checkpoint(tmp_path / "m.safetensors")
    assert info["config"].encoder == "mobilenetv2"
    assert info["config"].tag == "unet-mobilenetv2-w4d3-48x32"
    assert UNetConfig(base_width=8, depth=4, input_height=96, input_width=128).tag == "unet-w8d4-128x96"
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    # checkpoints written before the field existed carry no "encoder" key
    old = {k: v for k, v in json.loads(UNetConfig(depth=2, input_height=32, input_width=32).to_json()).items()
           if k != "encoder"}
    assert UNetConfig.from_json(json.dumps(old)).encoder == "unet"


def test_load_encoder_copies_imagenet_style_tensors_and_refuses_partial_files(tmp_path):
    from safetensors.torch import save_file
    from humanseg_batch.model.train import load_encoder

    # a full MobileNetV2 (depth 5) file, as fetch_encoder.py writes it, initialises a shallower encoder
    source = build_unet(encoder="mobilenetv2", depth=5, base_width=4, input_height=64, input_width=64)
    tensors = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    save_file(tensors, str(tmp_path / "enc.safetensors"))
    model = build_unet(encoder="mobilenetv2", depth=3, base_width=4, input_height=64, input_width=64)
    head = model.head.weight.detach().clone()
    n = load_encoder(model, str(tmp_path / "enc.safetensors"))
    own = model.state_dict()
    assert n == len([k for k in own if k.startswith("encoder.") and not k.endswith("num_batches_tracked")])
    assert all(torch.equal(own[k], tensors[k]) for k in own if k.startswith("encoder.") and "num_batches" not in k)
    assert torch.equal(model.head.weight, head)               # the expansive path is left alone
    partial = {k: v for k, v in tensors.items() if not k.startswith("encoder.features.6.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        load_encoder(model, str(tmp_path / "partial.safetensors"))


def test_every_encoder_tensor_is_in_the_imagenet_file_with_its_shape():
    # names and shapes of the real file that model/recipe/fetch_encoder.py writes (no weights committed)
    from pathlib import Path
    listed = json.loads((Path(__file__).parent / "data" / "mobilenetv2_imagenet_keys.json").read_text())["tensors"]
    model = build_unet(encoder="mobilenetv2", depth=5, base_width=4, input_height=64, input_width=64)
    own = {k: list(v.shape) for k, v in model.state_dict().items()
           if k.startswith("encoder.") and not k.endswith("num_batches_tracked")}
    assert own and {k: listed.get(k) for k in own} == own


def test_weights_resolve_shipped_names_files_and_refuse_folders(tmp_path, monkeypatch):
    from humanseg_batch.model.checkpoint import resolve_weights, shipped_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quality").mkdir()               # an output folder named after the model does not shadow it
    assert resolve_weights("quality") == shipped_weights()["quality"]
    with pytest.raises(CheckpointError, match="no shipped model named 'hirs'"):
        resolve_weights("hirs")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint("./quality")
    save_checkpoint(tmp_path / "mine.safetensors", build_unet(base_width=4, depth=2, input_height=32, input_width=32))
    assert load_checkpoint("mine.safetensors")[1]["config"].depth == 2
