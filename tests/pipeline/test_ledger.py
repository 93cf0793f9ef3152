"""The ledger and the shard assembly, driven by the core alone: no CLI, no Ray."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from humanseg_batch.model import Segmenter
from humanseg_batch.pipeline.ledger import (Ledger, RunMismatchError, ShardAssembly, check_or_write_run_record,
                                            read_run_record)
from humanseg_batch.pipeline.manifest import ManifestReader
from humanseg_batch.pipeline.planner import plan_manifest
from humanseg_batch.pipeline.process import LocalInference, ModelInfo, UnitContext, expand_shard, run_unit
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import read_mask

from mediagen import write_manifest


@pytest.fixture
def job(tmp_path, media, tiny_weights):
    """A manifest (two images, a video, a missing file; an extra column named like an output column),
    the unit context of an empty OUT, and a local model."""
    rows = [{"uri": str(media["a"]), "id": "a", "status": "s-a", "camera": "north"},
            {"uri": str(media["b"]), "id": "b", "status": "s-b", "camera": "south"},
            {"uri": str(media["v1"]), "id": "v1", "status": "s-v1", "camera": "east"},
            {"uri": str(tmp_path / "gone.mp4"), "id": "gone", "status": "s-gone", "camera": "west"}]
    manifest = ManifestReader(str(write_manifest(tmp_path / "manifest.csv", rows)))
    seg = Segmenter.from_checkpoint(tiny_weights, device="cpu", precision="fp32", batch_size=4)
    c = seg.config
    model = ModelInfo("tiny", seg.weights_sha256, c.input_height, c.input_width, seg.threshold, 4)
    ctx = UnitContext(output=Storage(str(tmp_path / "out")), model=model, chunk_seconds=1.0, images_per_unit=1)
    return manifest, ctx, LocalInference(seg)


def plan(ledger: Ledger, manifest: ManifestReader, shard_size: int = 2) -> list:
    """The ledger's pending shards, as `run` plans them."""
    p = plan_manifest(manifest, shard_size, None, ledger.committed_names(), lambda: ledger.done_ids)
    return list(p.shards(p.pending(ledger.committed_names() | ledger.failed_names())))


def feed(assembly: ShardAssembly, ctx: UnitContext, inference, stop_before_last: bool = False) -> list:
    """What an executor does: expand the shard, then land its units one by one."""
    units, rows = expand_shard(assembly.shard, ctx)
    assembly.expanded(units, rows)
    for unit in units[:-1] if stop_before_last else units:
        assembly.landed(*run_unit(unit, ctx, inference))
    return units


def test_a_shard_commits_when_its_last_unit_lands_and_a_new_ledger_plans_only_the_rest(job):
    manifest, ctx, inference = job
    ledger = Ledger(ctx.output)
    first, second = plan(ledger, manifest)
    assembly = ShardAssembly(first, ledger)
    units = feed(assembly, ctx, inference, stop_before_last=True)
    assert len(units) == 2 and not ledger.done and Ledger(ctx.output).committed_files() == ([], [])

    assembly.landed(*run_unit(units[-1], ctx, inference))
    parquet = f"metadata/{first.name}.parquet"
    assert Ledger(ctx.output).committed_files() == ([parquet], [])
    rows = pq.read_table(ctx.output.full(parquet)).to_pylist()
    assert [(r["id"], r["status"], r["manifest_status"], r["camera"]) for r in rows] == [
        ("a", "ok", "s-a", "north"), ("b", "ok", "s-b", "south")]
    for r in rows:
        assert read_mask(r["mask_uri"]).shape == (r["height"], r["width"])
    marker = ledger.done[first.name]
    assert (marker["ids"], marker["rows_ok"], marker["rows_error"], marker["units"]) == (["a", "b"], 2, 0, 2)

    fresh = Ledger(ctx.output)
    assert [s.name for s in plan(fresh, manifest)] == [second.name]
    assert fresh.done_ids == {"a", "b"}


def test_error_rows_commit_and_retry_errors_takes_the_shard_back(job):
    manifest, ctx, inference = job
    ledger = Ledger(ctx.output)
    first, second = plan(ledger, manifest)
    feed(ShardAssembly(second, ledger), ctx, inference)
    rows = pq.read_table(ctx.output.full(f"metadata/{second.name}.parquet")).to_pylist()
    gone = [r for r in rows if r["id"] == "gone"]
    assert len(gone) == 1 and gone[0]["status"] == "error" and gone[0]["manifest_status"] == "s-gone"
    assert len(rows) == 1 + 35 and ledger.done[second.name]["video_frames"] == 35

    fresh = Ledger(ctx.output)
    assert fresh.shards_with_errors() == [second.name]
    assert fresh.uncommit_errors() == [second.name]
    again = Ledger(ctx.output)
    assert [s.name for s in plan(again, manifest)] == [first.name, second.name]
    assert again.committed_files() == ([], [])


def test_failed_shards_are_not_pending_until_they_commit_and_leftovers_are_removed(job):
    manifest, ctx, inference = job
    ledger = Ledger(ctx.output)
    first, second = plan(ledger, manifest)
    ShardAssembly(first, ledger).fail("decoder crashed")
    fresh = Ledger(ctx.output)
    assert fresh.failed[first.name]["reason"] == "decoder crashed"
    assert [s.name for s in plan(fresh, manifest)] == [second.name]      # the failed shard waits for `retry`

    ctx.output.write_bytes(f"metadata/{second.name}.parquet", b"half a run")   # no marker: a leftover
    assert fresh.remove_leftovers() == [f"{second.name}.parquet"]
    feed(ShardAssembly(first, fresh), ctx, inference)
    after = Ledger(ctx.output)
    assert not after.failed and list(after.done) == [first.name]
    assert after.committed_files() == ([f"metadata/{first.name}.parquet"], [])


def test_a_commit_that_cannot_write_fails_the_shard_and_the_run_goes_on(job):
    manifest, ctx, inference = job
    ledger = Ledger(ctx.output)
    first, _ = plan(ledger, manifest)
    ctx.output.write_bytes("metadata", b"a file where the Parquet folder should be")
    assembly = ShardAssembly(first, ledger)
    feed(assembly, ctx, inference)
    assert assembly.failed and not ledger.done
    assert Ledger(ctx.output).failed[first.name]["reason"].startswith("commit failed: ")
    assert ledger.failed_now == {first.name: Ledger(ctx.output).failed[first.name]["reason"]}


def test_the_run_record_refuses_a_rerun_with_other_results(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    record = {"config": {"weights_sha256": "aa", "shard_size": 2, "batch_size": 4}, "created": 1.0, "runs": 1}
    assert check_or_write_run_record(storage, record, ["weights_sha256", "shard_size"]) is None
    faster = dict(record, config=dict(record["config"], batch_size=16), created=2.0)
    check_or_write_run_record(storage, faster, ["weights_sha256", "shard_size"])
    assert read_run_record(storage)["runs"] == 2 and read_run_record(storage)["created"] == 1.0
    other = dict(record, config=dict(record["config"], shard_size=3))
    with pytest.raises(RunMismatchError, match="shard_size: 2 -> 3"):
        check_or_write_run_record(storage, other, ["weights_sha256", "shard_size"])
