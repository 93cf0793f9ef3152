"""Metrics against hand-computed numbers, COCO decoding on hand-made annotations, and `evaluate` end to end."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from humanseg_batch.model import Segmenter, build_unet, save_checkpoint
from humanseg_batch.model.data import (coco_person_masks, decode_polygons, decode_rle, load_coco, load_folder,
                                       rle_counts_from_string)
from humanseg_batch.model.evaluate import evaluate, evaluate_masks
from humanseg_batch.model.losses import confusion, scores


def test_metrics_match_hand_computation():
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :3] = 1          # 3 true pixels on row 0 ...
    truth[1, :2] = 1          # ... and 2 on row 1
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :4] = 1           # 3 hits + 1 false alarm, misses row 1
    tp, fp, fn, tn = confusion(pred, truth)
    assert (tp, fp, fn, tn) == (3, 1, 2, 10)
    s = scores(tp, fp, fn, tn)
    assert s["iou"] == pytest.approx(3 / 6)
    assert s["dice"] == pytest.approx(6 / 9)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["fpr"] == pytest.approx(1 / 11)


def test_empty_truth_conventions():
    empty = np.zeros((3, 3), np.uint8)
    assert scores(*confusion(empty, empty)) == {"iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0, "fpr": 0.0}
    one = empty.copy(); one[1, 1] = 1
    s = scores(*confusion(one, empty))
    assert s["iou"] == 0.0 and s["fpr"] == pytest.approx(1 / 9)


def test_evaluate_masks_overall_numbers():
    t1 = np.zeros((2, 2), np.uint8); t1[0] = 1
    p1 = np.zeros((2, 2), np.uint8); p1[0, 0] = 1           # iou 1/2
    t2 = np.zeros((2, 2), np.uint8)
    p2 = np.zeros((2, 2), np.uint8); p2[1, 1] = 255         # person-free photo, 1 of 4 pixels false
    rows, overall = evaluate_masks(["a", "b"], [p1, p2], [t1, t2])
    assert rows[0]["iou"] == 0.5 and rows[1]["iou"] == 0.0
    assert overall["mean_iou_with_people"] == 0.5
    assert overall["mean_false_person_fraction_person_free"] == 0.25
    assert overall["pooled_iou"] == pytest.approx(1 / 3)     # tp 1, fp 1, fn 1
    assert overall["images_with_people"] == 1 and overall["person_free_images"] == 1


def test_uncompressed_rle_is_column_major():
    m = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    assert m.tolist() == [[0, 1, 0], [1, 0, 0]]


def test_compressed_rle_string():
    # counts 0, 40, 5, 10: "0" | 40 = 8 + 1*32 -> chr(48+8+32) chr(48+1) | "5" | 10 - 40 = -30 stored as "RO"
    assert rle_counts_from_string("0X15RO") == [0, 40, 5, 10]
    m = decode_rle({"size": [5, 11], "counts": "0X15RO"})
    flat = m.T.reshape(-1)
    assert flat[:40].all() and not flat[40:45].any() and flat[45:].all() and m.sum() == 50


def test_polygon_fill():
    m = decode_polygons([[1, 1, 4, 1, 4, 4, 1, 4]], 6, 6)
    assert m[1:5, 1:5].all() and m.sum() == 16


def test_coco_person_union_ignores_other_categories(tmp_path):
    ann = {"images": [{"id": 7, "file_name": "a.png", "height": 2, "width": 3},
                      {"id": 8, "file_name": "b.png", "height": 2, "width": 3}],
           "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 1, "segmentation": {"size": [2, 3], "counts": [1, 2, 3]}},
               {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [2, 3], "counts": "51"}},
               {"id": 3, "image_id": 8, "category_id": 3, "segmentation": [[0, 0, 2, 0, 2, 1, 0, 1]]}]}
    masks = coco_person_masks(ann)
    assert masks[7].tolist() == [[0, 1, 0], [1, 0, 1]] and not masks[8].any()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.full((2, 3, 3), 128, np.uint8))
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    samples = load_coco(tmp_path / "ann.json")
    assert samples.names == ["a.png", "b.png"] and samples.masks[0].tolist() == masks[7].tolist()


def test_evaluate_writes_csv_and_json(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / "d" / "images" / f"im{i}.jpg"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
        m = np.zeros((40, 60), np.uint8)
        m[10:30, 20 + i:40] = 255
        cv2.imwrite(str(tmp_path / "d" / "masks" / f"im{i}.png"), m)
    model = build_unet(base_width=4, depth=2, input_height=32, input_width=48)
    save_checkpoint(tmp_path / "w.safetensors", model)
    overall = evaluate(str(tmp_path / "w.safetensors"), tmp_path / "d", tmp_path / "rows.csv",
                       tmp_path / "all.json", device="cpu", precision="fp32")
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert [r["name"] for r in rows] == ["im0.jpg", "im1.jpg", "im2.jpg"]
    assert json.loads((tmp_path / "all.json").read_text())["images"] == 3
    # the same numbers as scoring the Segmenter's masks directly
    seg = Segmenter.from_checkpoint(str(tmp_path / "w.safetensors"), device="cpu", precision="fp32")
    samples = load_folder(tmp_path / "d")
    _, direct = evaluate_masks(samples.names, [r.mask for r in seg.segment(samples.images)], samples.masks)
    assert overall["pooled_iou"] == pytest.approx(direct["pooled_iou"]) and overall["tp"] == direct["tp"]
    assert int(rows[0]["truth_pixels"]) == 20 * 20


def test_eval_command(tmp_path):
    from click.testing import CliRunner

    from humanseg_batch.jobs.train_cli import eval_

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "images" / "a.png"), np.full((20, 30, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "d" / "masks" / "a.png"), np.zeros((20, 30), np.uint8))
    save_checkpoint(tmp_path / "w.safetensors", build_unet(base_width=4, depth=2, input_height=16, input_width=24))
    result = CliRunner().invoke(eval_, [str(tmp_path / "d"), "--weights", str(tmp_path / "w.safetensors"),
                                        "--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "o.json"),
                                        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o.json").read_text())["person_free_images"] == 1
    assert (tmp_path / "r.csv").read_text().startswith("name,width,height")
    # a shipped model by name
    result = CliRunner().invoke(eval_, [str(tmp_path / "d"), "--weights", "quality", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["person_free_images"] == 1
