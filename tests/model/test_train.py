"""Training on a synthetic task: person-like figures on textured backgrounds."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from humanseg_batch.model import load_checkpoint
from humanseg_batch.model.augment import AugmentConfig, TrainingSet, composite, letterbox
from humanseg_batch.model.data import SampleSet, load_pack, save_pack, split_indices
from humanseg_batch.model.train import TrainConfig, latest_state, lr_factor, train
from humanseg_batch.model.unet import UNetConfig, build_unet


def textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour blobs plus stripes plus pixel noise."""
    low = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += stripes[..., None] * rng.uniform(5, 25, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_person(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """An ellipse head, a rounded-rectangle torso and four thick limbs, in one random colour."""
    h, w = mask.shape
    s = rng.uniform(0.55, 0.9) * h             # body height
    cx, top = rng.uniform(0.25, 0.75) * w, rng.uniform(0.02, 0.12) * h
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    layer = np.zeros_like(mask)
    head = (int(cx), int(top + 0.09 * s))
    cv2.ellipse(layer, head, (int(0.06 * s), int(0.08 * s)), 0, 0, 360, 1, -1)
    tw, t0, t1 = 0.11 * s, top + 0.17 * s, top + 0.55 * s
    cv2.rectangle(layer, (int(cx - tw + 3), int(t0)), (int(cx + tw - 3), int(t1)), 1, -1)
    cv2.rectangle(layer, (int(cx - tw), int(t0 + 3)), (int(cx + tw), int(t1 - 3)), 1, -1)
    thick = max(3, int(0.08 * s))
    for side in (-1, 1):
        cv2.line(layer, (int(cx + side * tw), int(t0 + 4)),
                 (int(cx + side * (tw + rng.uniform(0.05, 0.2) * s)), int(top + 0.5 * s)), 1, thick)
        cv2.line(layer, (int(cx + side * tw * 0.5), int(t1)),
                 (int(cx + side * rng.uniform(0.05, 0.2) * s), int(top + s)), 1, thick)
    img[layer > 0] = np.clip(np.array(colour) + rng.normal(0, 10, (int(layer.sum()), 3)), 0, 255)
    mask |= layer


def synthetic_set(n: int, size: int = 64, seed: int = 0) -> SampleSet:
    rng = np.random.default_rng(seed)
    out = SampleSet()
    for i in range(n):
        img = textured_background(rng, size, size)
        mask = np.zeros((size, size), np.uint8)
        if i % 8:  # every 8th image is person-free
            draw_person(img, mask, rng)
        out.add(img, mask, f"s{i:04d}.png")
    return out


TINY = UNetConfig(base_width=8, depth=3, input_height=64, input_width=64)
GENTLE = AugmentConfig(zoom=(0.85, 1.2), rotate=8.0, shift=0.05, colour=0.1, blur=0.1, noise=0.1)


def config(tmp_path, data, **kw) -> TrainConfig:
    base = dict(data=str(data), out_dir=str(tmp_path / "run"), model=TINY, augment=GENTLE, epochs=28,
                batch_size=16, lr=1e-2, val_fraction=0.15, seed=3, device="cpu", precision="fp32", threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    save_pack(path, synthetic_set(288), jpeg_quality=98)
    return path


def write_folder(root, samples: SampleSet) -> None:
    """A labelled folder as `train` and `eval` read it: images/ and masks/ with the same names."""
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    for img, m, name in zip(samples.images, samples.masks, samples.names):
        assert cv2.imwrite(str(root / "images" / name), img) and cv2.imwrite(str(root / "masks" / name), m * 255)


def test_learns_synthetic_people(tmp_path, packed):
    from click.testing import CliRunner

    from humanseg_batch.jobs.cli import cli

    result = train(config(tmp_path, packed), log=lambda s: None)
    assert result.best_val_iou >= 0.9, result.history
    model, info = load_checkpoint(result.best_path)
    assert model.config == TINY and info["extra"]["epoch"] == result.best_epoch
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 29))
    # the trainer picked its best epoch on its own validation split; score the saved checkpoint with
    # `eval` on pictures it never saw (another seed: other backgrounds, figures and colours)
    write_folder(tmp_path / "held_out", synthetic_set(64, seed=1234))
    scored = CliRunner().invoke(cli, ["eval", str(tmp_path / "held_out"), "--weights", str(result.best_path),
                                      "--json", str(tmp_path / "eval.json"), "--device", "cpu", "--precision", "fp32"])
    assert scored.exit_code == 0, scored.output
    overall = json.loads((tmp_path / "eval.json").read_text())
    assert overall["images"] == 64 and overall["weights_sha256"] == info["sha256"]
    assert overall["mean_iou_with_people"] >= 0.9, overall
    assert overall["false_person_pixels_person_free"] <= 0.02, overall


class Interrupted(Exception):
    pass


def stop_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch={epoch} "):
            raise Interrupted
    return log


def test_resume_matches_uninterrupted_run(tmp_path, packed):
    small = dict(epochs=3, lr=5e-3)
    straight = train(config(tmp_path / "a", packed, **small), log=lambda s: None)
    with pytest.raises(Interrupted):
        train(config(tmp_path / "b", packed, **small), log=stop_after(2))
    resumed = train(config(tmp_path / "b", packed, **dict(small, resume=True)), log=lambda s: None)
    assert resumed.epochs_run == 3 and latest_state(tmp_path / "b" / "run").name == "epoch_003.pt"
    assert load_checkpoint(tmp_path / "b" / "run" / "last.safetensors")[1]["extra"]["epoch"] == 3
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_iou"] == pytest.approx(b["val_iou"], abs=1e-6)
    sa = torch.load(latest_state(tmp_path / "a" / "run"), weights_only=True)["model"]
    sb = torch.load(latest_state(tmp_path / "b" / "run"), weights_only=True)["model"]
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)


def test_resume_refuses_a_different_config(tmp_path, packed):
    train(config(tmp_path, packed, epochs=1), log=lambda s: None)
    with pytest.raises(ValueError, match="different config"):
        train(config(tmp_path, packed, epochs=2, lr=1e-4, resume=True), log=lambda s: None)


def test_split_is_reproducible_and_keeps_groups_together():
    groups = [f"g{i // 3}" for i in range(30)]
    a, b = split_indices(groups, 0.2, seed=1), split_indices(groups, 0.2, seed=1)
    assert a == b and len(a[1]) == 6
    assert not {groups[i] for i in a[0]} & {groups[i] for i in a[1]}
    assert split_indices(groups, 0.2, seed=2) != a


def test_pack_round_trip_and_augmentation_shapes(tmp_path):
    s = synthetic_set(5)
    s.cutouts = [(s.images[1], s.masks[1] * 255)]
    s.backgrounds = [s.images[0]]
    save_pack(tmp_path / "p.npz", s)
    back = load_pack(tmp_path / "p.npz")
    assert back.names == s.names and all((a == b).all() for a, b in zip(back.masks, s.masks))
    assert len(back.cutouts) == 1 and (back.cutouts[0][1] == s.masks[1] * 255).all()
    ds = TrainingSet(back, 48, 64, AugmentConfig(), seed=0, composites=3)
    assert len(ds) == 8
    x, y = ds[7]
    assert x.shape == (48, 64, 3) and y.shape == (48, 64) and x.dtype == torch.uint8
    assert torch.equal(ds[7][0], x)     # same (seed, epoch, index) -> same sample
    img, m = composite(back.backgrounds[0], back.cutouts, np.random.default_rng(0), AugmentConfig())
    assert img.shape == (64, 64, 3) and m.max() <= 1


def test_letterbox_matches_segmenter_layout():
    img = np.full((30, 90, 3), 200, np.uint8)
    out, m = letterbox(img, np.ones((30, 90), np.uint8), 48, 64)
    assert out.shape == (48, 64, 3) and m[:21, :64].all() and not m[22:].any() and not out[22:].any()


def test_schedules_start_low_peak_and_end_low():
    for name in ("onecycle", "cosine"):
        f = [lr_factor(name, s, 100) for s in range(101)]
        assert f[0] < 0.1 and max(f) == pytest.approx(1.0, abs=0.02) and f[-1] < 1e-3


def test_train_command_on_a_labelled_folder(tmp_path):
    from click.testing import CliRunner

    from humanseg_batch.jobs.train_cli import train as train_cmd

    write_folder(tmp_path / "d", synthetic_set(12, size=32))
    args = [str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "4",
            "--base-width", "4", "--depth", "2", "--input-size", "32x32", "--device", "cpu", "--precision", "fp32"]
    result = CliRunner().invoke(train_cmd, args)
    assert result.exit_code == 0, result.output
    assert "epoch=2" in result.output and (tmp_path / "run" / "best.safetensors").exists()
    bad = CliRunner().invoke(train_cmd, args[:3] + ["--input-size", "30x30"])
    assert bad.exit_code != 0 and "divisible" in bad.output
    # the MobileNetV2 contracting path, started from an encoder file
    from safetensors.torch import save_file
    mb = build_unet(encoder="mobilenetv2", depth=2, base_width=4, input_height=32, input_width=32)
    save_file({k: v for k, v in mb.state_dict().items() if k.startswith("encoder.")}, str(tmp_path / "enc.safetensors"))
    args_mb = args[:2] + [str(tmp_path / "run-mb")] + args[3:] + ["--encoder", "mobilenetv2", "--init-encoder",
                                                                 str(tmp_path / "enc.safetensors"), "--encoder-lr-scale", "0.3"]
    result = CliRunner().invoke(train_cmd, args_mb)
    assert result.exit_code == 0, result.output
    assert "tensors from" in result.output
    assert load_checkpoint(tmp_path / "run-mb" / "best.safetensors")[0].config.encoder == "mobilenetv2"


def test_cut_close_ups_stay_at_their_cut_side():
    rgb = np.full((40, 20, 3), 200, np.uint8)
    alpha = np.zeros((40, 20), np.uint8)
    alpha[4:, 4:16] = 255                   # a body cut by the photo's bottom edge
    bg = np.zeros((60, 80, 3), np.uint8)
    for seed in range(5):
        cfg = AugmentConfig(composite_people=(1, 1))
        _, m = composite(bg, [(rgb, alpha)], np.random.default_rng(seed), cfg)
        assert m[-1].any() and not m[0].any()


def test_persistent_workers_see_each_epoch_like_the_main_process():
    from humanseg_batch.model.augment import EpochSampler

    s = synthetic_set(6, size=32)
    ds = TrainingSet(s, 32, 32, AugmentConfig(), seed=1)
    batches = {}
    for workers in (0, 2):
        sampler = EpochSampler(len(ds), seed=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=workers,
                                             persistent_workers=workers > 0)
        seen = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            seen += [x for x, _ in loader]
        batches[workers] = torch.stack(seen)
    assert torch.equal(batches[0], batches[2])
    assert not torch.equal(batches[0][:2], batches[0][2:])     # epochs differ


def test_encoder_lr_scale_zero_trains_only_the_expansive_path(tmp_path, packed):
    from safetensors.torch import save_file

    mb = UNetConfig(encoder="mobilenetv2", depth=2, base_width=8, input_height=64, input_width=64)
    init = build_unet(mb)
    enc = {k: v for k, v in init.state_dict().items() if k.startswith("encoder.")}
    save_file(enc, str(tmp_path / "enc.safetensors"))
    result = train(config(tmp_path, packed, model=mb, epochs=1, init_encoder=str(tmp_path / "enc.safetensors"),
                          encoder_lr_scale=0.0), log=lambda s: None)
    trained = load_checkpoint(tmp_path / "run" / "last.safetensors")[0]
    params = dict(trained.named_parameters())
    start = dict(init.named_parameters())
    assert result.epochs_run == 1
    assert all(torch.equal(p, start[k]) for k, p in params.items() if k.startswith("encoder."))
    assert not torch.equal(params["head.weight"], start["head.weight"])


def test_distractors_change_the_picture_but_never_the_mask():
    rng = np.random.default_rng(0)
    bg = textured_background(rng, 96, 128)
    other = np.full((80, 80, 3), (200, 30, 30), np.uint8)
    cfg = AugmentConfig(composite_people=(0, 0), distractors=(2, 2))
    img, mask = composite(bg, [], np.random.default_rng(1), cfg, [other])
    assert mask.sum() == 0 and np.abs(img.astype(int) - bg).max() > 50


def test_channel_swap_permutes_colours_only():
    from humanseg_batch.model.augment import _photometric

    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 120, 240
    plain = AugmentConfig(colour=0.0, blur=0.0, noise=0.0, grey=0.0)
    swapped = [_photometric(img, np.random.default_rng(s), dataclasses.replace(plain, channel_swap=1.0))[0, 0]
               for s in range(12)]
    assert all(sorted(p.tolist()) == [10, 120, 240] for p in swapped)
    assert len({tuple(p.tolist()) for p in swapped}) > 1
    assert _photometric(img, np.random.default_rng(0), plain)[0, 0].tolist() == [10, 120, 240]


def test_encoder_groups_follow_the_scale_and_old_run_folders_resume(tmp_path, packed):
    mb = UNetConfig(encoder="mobilenetv2", depth=2, base_width=8, input_height=64, input_width=64)
    train(config(tmp_path / "a", packed, model=mb, epochs=1, encoder_lr_scale=0.3), log=lambda s: None)
    groups = torch.load(latest_state(tmp_path / "a" / "run"), weights_only=True)["optimizer"]["param_groups"]
    lrs = {g["lr_scale"]: g["lr"] for g in groups}
    assert set(lrs) == {0.3, 1.0} and lrs[0.3] == pytest.approx(0.3 * lrs[1.0])
    # a run folder written before encoder/encoder_lr_scale/channel_swap/distractors existed still resumes
    train(config(tmp_path / "b", packed, epochs=1), log=lambda s: None)
    path = tmp_path / "b" / "run" / "train_config.json"
    saved = json.loads(path.read_text())
    del saved["encoder_lr_scale"], saved["model"]["encoder"], saved["augment"]["channel_swap"], saved["augment"]["distractors"]
    path.write_text(json.dumps(saved))
    assert train(config(tmp_path / "b", packed, epochs=2, resume=True), log=lambda s: None).epochs_run == 2
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        config(tmp_path, packed, encoder_lr_scale=-1.0)
