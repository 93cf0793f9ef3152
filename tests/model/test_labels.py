"""Unknown label pixels (value 128 in files, 2 in memory), folders with cut-outs and backgrounds, eval by
person size and the contact sheet of the worst images."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from humanseg_batch.model.augment import AugmentConfig, augment, letterbox
from humanseg_batch.model.data import UNKNOWN, SampleSet, load_folder, load_pack, save_pack
from humanseg_batch.model.evaluate import contact_sheet, evaluate_masks
from humanseg_batch.model.losses import bce_dice_loss, confusion


def _label() -> np.ndarray:
    m = np.zeros((60, 80), np.uint8)
    m[10:30, 10:30] = 1
    m[40:50, 50:70] = UNKNOWN
    return m


def test_unknown_pixels_are_neither_scored_nor_learned():
    m = _label()
    # a prediction that marks every unknown pixel person scores as one that marks none
    assert confusion(m == 1, m) == confusion((m == 1) | (m == UNKNOWN), m) == (400, 0, 0, 60 * 80 - 400 - 200)
    truth = torch.from_numpy(m)[None, None]
    logits = torch.where(truth == 1, 4.0, -4.0).float()
    wild = logits.clone()
    wild[truth == UNKNOWN] = 9.0            # confidently "person" where nobody knows
    assert torch.isclose(bce_dice_loss(logits, truth), bce_dice_loss(wild, truth))
    wrong = logits.clone()
    wrong[truth == 0] = 9.0                 # ... but not where the label says background
    assert bce_dice_loss(wrong, truth) > bce_dice_loss(logits, truth) + 1


def test_label_files_packs_and_augmentation_keep_unknown(tmp_path):
    root = tmp_path / "set"
    for sub in ("images", "masks", "cutouts", "backgrounds"):
        (root / sub).mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "images" / "clip__0001.jpg"), img)
    levels = np.where(_label() == 1, 255, np.where(_label() == UNKNOWN, 128, 0)).astype(np.uint8)
    cv2.imwrite(str(root / "masks" / "clip__0001.png"), levels)
    rgba = np.dstack([img[:30, :20], np.full((30, 20), 255, np.uint8)])
    cv2.imwrite(str(root / "cutouts" / "p.png"), rgba)
    cv2.imwrite(str(root / "backgrounds" / "b.jpg"), img)
    s = load_folder(root)
    assert (s.masks[0] == _label()).all() and s.groups == ["clip"]
    assert len(s.cutouts) == 1 and s.cutouts[0][1].min() == 255 and len(s.backgrounds) == 1
    save_pack(tmp_path / "p.npz", s)
    assert (load_pack(tmp_path / "p.npz").masks[0] == _label()).all()
    _, boxed = letterbox(img, _label(), 48, 64)
    assert set(np.unique(boxed)) == {0, 1, UNKNOWN}
    _, warped = augment(img, _label(), 48, 64, np.random.default_rng(1), AugmentConfig(rotate=0, zoom=(1, 1)))
    assert set(np.unique(warped)) == {0, 1, UNKNOWN}


def test_eval_by_person_size_and_false_pixels_on_person_free_photos():
    small = np.zeros((100, 100), np.uint8)
    small[:1, :100] = 1                      # 1 % of the frame
    large = np.zeros((100, 100), np.uint8)
    large[:50] = 1                           # 50 %
    free = np.zeros((100, 100), np.uint8)
    large[50:] = UNKNOWN                     # the rest unknown: not counted, whatever the prediction
    preds = [small.copy(), np.zeros_like(large), free.copy()]
    preds[1][50:] = 1
    preds[2][:2] = 1                         # 200 false person pixels out of 10,000
    rows, overall = evaluate_masks(["s", "l", "f"], preds, [small, large, free])
    assert [r["size"] for r in rows] == ["small", "large", "none"]
    assert rows[1]["truth_pixels"] == 5000 and rows[1]["fp"] == 0 and rows[1]["tn"] == 0
    assert overall["mean_iou_small"] == 1.0 and overall["mean_iou_large"] == 0.0
    assert overall["images_medium"] == 0 and overall["mean_iou_with_people"] == 0.5
    assert overall["false_person_pixels_person_free"] == 0.02


def test_contact_sheet_shows_the_worst_images_first(tmp_path):
    s = SampleSet()
    truths = [np.zeros((40, 60), np.uint8) for _ in range(3)]
    for i, t in enumerate(truths):
        t[10:30, 10:30] = 1
        s.add(np.full((40, 60, 3), 60 * i, np.uint8), t, f"img{i}")
    preds = [truths[0], np.zeros_like(truths[1]), np.roll(truths[2], 10, axis=1)]   # IoU 1, 0, 1/3
    rows, _ = evaluate_masks(s.names, preds, s.masks)
    names = contact_sheet(tmp_path / "sheet.png", s, preds, rows, count=2, size=64, columns=2)
    assert names == ["img1", "img2"]                 # IoU 0, then the shifted one
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (64 + 18, 128, 3)
    assert (sheet[:64, :64, 2] > 200).sum() == 0      # img1 predicted nothing: no red tint in its tile
    assert (sheet[:43, 64:, 2] > 150).sum() > 0       # img2's wrong prediction is tinted red


def test_temporal_smoothing_removes_one_frame_flips_without_lag():
    from humanseg_batch.model.temporal import TemporalSmoother, flicker, smooth

    frames = [np.zeros((4, 10), np.uint8) for _ in range(6)]
    for t, f in enumerate(frames):
        f[:, t:t + 3] = 250                         # a person three columns wide, moving right a column a frame
    frames[3][0, 9] = 250                           # a one-frame false alarm away from it
    out = smooth(frames)
    assert len(out) == 6
    masks = [p > 127 for p in out]
    assert not masks[3][0, 9]                       # the lone flip is gone
    for t, m in enumerate(masks):                   # the person is where it is now, not where it was
        assert m[:, t:t + 3].all() and m.sum() == 12, t
    assert flicker(masks) < flicker([f > 127 for f in frames])
    s = TemporalSmoother()
    assert s.push(frames[0], "a") == [] and [p for _, p in s.push(frames[1], "b")] == ["a"]
    assert [p for _, p in s.push(np.zeros((2, 2), np.uint8), "c")] == ["b"]     # a new size flushes
    assert [p for _, p in s.flush()] == ["c"] and s.flush() == []
    assert flicker([frames[0]]) == 0.0 and flicker([frames[0], frames[1]]) == 8 / 40


def test_validation_does_not_count_unknown_pixels():
    from humanseg_batch.model.preprocess import Normalise
    from humanseg_batch.model.train import validate
    from humanseg_batch.model.unet import build_unet

    model = build_unet(base_width=4, depth=2, input_height=16, input_width=16)
    masks = torch.zeros((2, 16, 16), dtype=torch.uint8)
    masks[:, :8] = 1
    masks[:, 8:12] = UNKNOWN                 # a quarter unknown, the last quarter background
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.constant_(model.head.bias, 5.0)        # "person" everywhere
    row = validate(model, torch.zeros((2, 16, 16, 3), dtype=torch.uint8), masks,
                   Normalise(model.config, torch.device("cpu")), "fp32")
    # person everywhere: 128 true, 64 false person pixels; the 64 unknown ones count for nothing
    assert abs(row["val_iou"] - 2 / 3) < 1e-6 and row["val_fpr"] == 1.0
