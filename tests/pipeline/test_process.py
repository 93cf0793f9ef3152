"""Planning a shard into units and processing them, with the core alone: no CLI, no Ray."""
from __future__ import annotations

import numpy as np
import pytest

from humanseg_batch.model import Segmenter
from humanseg_batch.pipeline.decode import decode_image
from humanseg_batch.pipeline.plan import ImageUnit, VideoUnit
from humanseg_batch.pipeline.planner import plan_manifest
from humanseg_batch.pipeline.manifest import ManifestReader
from humanseg_batch.pipeline.process import LocalInference, ModelInfo, UnitContext, expand_shard, run_unit
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import read_mask

from mediagen import write_manifest


@pytest.fixture
def segmenter(busy_weights):
    return Segmenter.from_checkpoint(busy_weights, device="cpu", precision="fp32", batch_size=2)


def context(tmp_path, seg: Segmenter, **kw) -> UnitContext:
    c = seg.config
    model = ModelInfo("busy", seg.weights_sha256, c.input_height, c.input_width, seg.threshold, seg.batch_size)
    return UnitContext(output=Storage(str(tmp_path / "out")), model=model, **kw)


def one_shard(tmp_path, rows: list[dict]):
    plan = plan_manifest(ManifestReader(str(write_manifest(tmp_path / "manifest.csv", rows))), 100, None, set(), set)
    (shard,) = plan.shards(plan.pending(set()))
    return shard


def test_expand_makes_image_groups_and_video_chunks_and_rows_for_what_cannot_be_planned(tmp_path, media, segmenter):
    shard = one_shard(tmp_path, [{"uri": str(media[k]), "id": k} for k in ("a", "v1", "b", "c", "v2")]
                      + [{"uri": str(tmp_path / "gone.mkv"), "id": "gone"}, {"uri": "", "id": "blank"}])
    units, rows = expand_shard(shard, context(tmp_path, segmenter, images_per_unit=2, chunk_seconds=1.0))
    images = [u for u in units if isinstance(u, ImageUnit)]
    videos = [u for u in units if isinstance(u, VideoUnit)]
    assert [[i.id for i in u.items] for u in images] == [["a", "b"], ["c"]]
    assert [u.group for u in images] == [0, 1]
    assert {u.item.id: len(u.video.pts) for u in videos} == {"v1": 35, "v2": 24}
    assert [u.plan.chunk for u in videos if u.item.id == "v1"] == [0, 1, 2, 3]   # 35 frames at 10 fps
    assert all(u.items == (u.item,) for u in videos)
    assert sorted((r["id"], r["status"]) for r in rows) == [("blank", "error"), ("gone", "error")]


def test_an_image_unit_writes_the_masks_the_segmenter_makes_and_a_row_for_a_broken_file(tmp_path, media, segmenter):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    shard = one_shard(tmp_path, [{"uri": str(p), "id": k} for k, p in
                                 [("a", media["a"]), ("broken", broken), ("b", media["b"]), ("c", media["c"])]])
    ctx = context(tmp_path, segmenter, images_per_unit=10)
    (unit,), _ = expand_shard(shard, ctx)
    rows, stats = run_unit(unit, ctx, LocalInference(segmenter))
    assert stats["frames"] == 3 and stats["errors"] == 1
    by_id = {r["id"]: r for r in rows}
    assert by_id["broken"]["status"] == "error" and by_id["broken"]["mask_uri"] is None
    # the pipeline's batches (two frames, then one) give the masks that Segmenter.segment gives
    expected = segmenter.segment([decode_image(media[k].read_bytes()) for k in ("a", "b", "c")])
    for k, want in zip(("a", "b", "c"), expected):
        mask = read_mask(by_id[k]["mask_uri"])
        np.testing.assert_array_equal(mask, want.mask)
        assert by_id[k]["person_fraction"] == pytest.approx(want.person_fraction)
        assert 0.0 < want.person_fraction < 1.0        # a mask with edges, so the comparison means something


def test_the_chunks_of_a_video_give_every_sampled_frame_once_with_its_time(tmp_path, media, segmenter):
    from humanseg_batch.pipeline.plan import Sampling

    shard = one_shard(tmp_path, [{"uri": str(media["v1"]), "id": "v1"}])
    ctx = context(tmp_path, segmenter, chunk_seconds=1.0, sampling=Sampling(every=2))
    units, _ = expand_shard(shard, ctx)
    rows = [r for u in units for r in run_unit(u, ctx, LocalInference(segmenter))[0]]
    assert [r["frame_index"] for r in rows] == list(range(0, 35, 2))
    assert [r["timestamp_s"] for r in rows] == pytest.approx([i / 10 for i in range(0, 35, 2)])
    for r in rows:
        assert r["status"] == "ok" and r["chunk"] == int(r["frame_index"] // 10)
        assert read_mask(r["mask_uri"], r["mask_frame"]).shape == (48, 64)


def test_temporal_smoothing_decides_each_video_mask_from_its_neighbours_too(tmp_path, media, segmenter):
    from humanseg_batch.model.preprocess import content_size, letterbox_into
    from humanseg_batch.model.segmenter import finish_mask
    from humanseg_batch.model.temporal import smooth
    from humanseg_batch.pipeline.decode import decode_chunk

    shard = one_shard(tmp_path, [{"uri": str(media["v1"]), "id": "v1"}])
    plain, smoothed = (context(tmp_path / name, segmenter, chunk_seconds=10.0, temporal_smoothing=on)
                       for name, on in (("plain", False), ("smoothed", True)))
    (unit,), _ = expand_shard(shard, smoothed)
    got = {name: run_unit(unit, ctx, LocalInference(segmenter))[0] for name, ctx in
           (("plain", plain), ("smoothed", smoothed))}
    assert [r["frame_index"] for r in got["smoothed"]] == [r["frame_index"] for r in got["plain"]] == list(range(35))
    # expected, built from the Segmenter's own probabilities for every frame of the chunk
    c = segmenter.config
    frames = [rgb for _, rgb, _ in decode_chunk(str(media["v1"]), unit.video, unit.plan,
                                                fit=lambda h, w: content_size(h, w, c.input_height, c.input_width))]
    buf = np.zeros((len(frames), c.input_height, c.input_width, 3), np.uint8)
    sizes = [letterbox_into(buf[i], f) for i, f in enumerate(frames)]
    probs = segmenter.infer(buf)
    differ = 0
    for row, raw_row, prob, raw, size in zip(got["smoothed"], got["plain"], smooth(list(probs)), probs, sizes):
        want = finish_mask(prob, size, (48, 64), segmenter.threshold).mask
        np.testing.assert_array_equal(read_mask(row["mask_uri"], row["mask_frame"]), want)
        np.testing.assert_array_equal(read_mask(raw_row["mask_uri"], raw_row["mask_frame"]),
                                      finish_mask(raw, size, (48, 64), segmenter.threshold).mask)
        differ += int((want != finish_mask(raw, size, (48, 64), segmenter.threshold).mask).any())
    assert differ > 0            # the smoothing changed some masks, so the comparison means something
