"""The training recipe end to end on tiny data, in seconds: pack a fetch_human.py-style folder (scenes with
unknown pixels, cut-outs, backgrounds), train the `quality` tier one epoch from a given start, measure it
on an eval folder and install it as a shipped tier into a scratch copy of the weights folder."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from humanseg_batch.model.checkpoint import load_checkpoint, save_checkpoint
from humanseg_batch.model.unet import UNet

RECIPE = Path(__file__).resolve().parents[2] / "model" / "recipe" / "train_tiers.py"


def _folder(root: Path, rng: np.random.Generator, n: int, prefix: str) -> None:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 80, (90, 120, 3), dtype=np.uint8)
        mask = np.zeros((90, 120), np.uint8)
        if i % 3:
            img[20:80, 40:70] = (200, 160, 120)
            mask[20:80, 40:70] = 255
            mask[:, 100:] = 128                   # unknown strip
        cv2.imwrite(str(root / "images" / f"{prefix}_{i}.jpg"), img)
        cv2.imwrite(str(root / "masks" / f"{prefix}_{i}.png"), mask)


def test_recipe_pack_train_measure_install(tmp_path):
    rng = np.random.default_rng(0)
    human = tmp_path / "human"
    _folder(human / "train", rng, 8, "coco")
    _folder(human / "eval", rng, 4, "coco")
    (human / "cutouts").mkdir()
    (human / "backgrounds").mkdir()
    cv2.imwrite(str(human / "cutouts" / "p.png"), np.dstack([np.full((60, 30, 3), 180, np.uint8),
                                                             np.full((60, 30), 255, np.uint8)]))
    cv2.imwrite(str(human / "backgrounds" / "b.jpg"), rng.integers(0, 80, (90, 120, 3), dtype=np.uint8))
    run = lambda *args: subprocess.run([sys.executable, str(RECIPE), *map(str, args)], capture_output=True,  # noqa: E731
                                       text=True, timeout=600)
    pack = tmp_path / "pack.npz"
    r = run("pack", "--human", human, "--out", pack, "--coco-repeat", 2)
    assert r.returncode == 0, r.stderr
    assert "16 scenes, 1 cut-outs, 1 backgrounds" in r.stdout
    # a random start of the quality tier's architecture stands in for ImageNet (no download in tests)
    spec = importlib.util.spec_from_file_location("train_tiers", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    start = tmp_path / "start.safetensors"
    save_checkpoint(start, UNet(recipe.TIERS["quality"]["model"]))
    out = tmp_path / "run"
    r = run("train", "quality", "--pack", pack, "--init", start, "--epochs", 1, "--composites", 4, "--out", out)
    assert r.returncode == 0, r.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["train_loss"] > 0
    r = run("measure", out / "last.safetensors", "--data", human / "eval", "--input", "288x288",
            "--csv", tmp_path / "eval.csv")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["images_with_people"] == 2 and summary["person_free_images"] == 2
    assert summary["model"] == "quality-mobilenetv2-w16d5-288x288" and "mean_iou_coco" in summary
    # install into a scratch weights folder: fp16 storage, the tier's name, the chosen input size
    weights = tmp_path / "weights"
    weights.mkdir()
    r = run("install", "quality", out / "last.safetensors", "--input", "320x320", "--weights-dir", weights)
    assert r.returncode == 0, r.stderr
    model, info = load_checkpoint(weights / "quality.safetensors")
    assert info["config"].tag == "quality-mobilenetv2-w16d5-320x320"
    trained, _ = load_checkpoint(out / "last.safetensors")
    for name, value in trained.state_dict().items():
        if value.is_floating_point():
            assert np.allclose(model.state_dict()[name].numpy(), value.half().float().numpy()), name
