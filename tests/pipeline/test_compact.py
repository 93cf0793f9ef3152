"""Compaction (pipeline/compact.py, pipeline/parts.py) on real files, local and on the moto S3 server:
the same rows and counts before and after, in every state a crash can leave, and after taking shards back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from humanseg_batch.jobs.query import open_output
from humanseg_batch.pipeline.compact import compact
from humanseg_batch.pipeline.ledger import Ledger
from humanseg_batch.pipeline.parts import COMPACTED_DIR, record_path
from humanseg_batch.pipeline.plan import Item, Shard
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import METADATA_DIR, ROW_SCHEMA, parquet_bytes, shard_parquet_path

from clirun import CLI, environ

SHARD = ROW_SCHEMA.names.index("shard")     # its place in a row of `select * from frames`
MARKER_FIELDS = ("rows", "rows_ok", "rows_error", "video_frames", "ids", "committed_at", "units", "decode_s")


def row(item: Item, shard: str, frame: int | None = None, status: str = "ok") -> dict:
    return {"id": item.id, "uri": item.uri, "media_type": "video" if frame is not None else "image",
            "frame_index": frame, "timestamp_s": None if frame is None else frame / 10, "width": 64, "height": 48,
            "mask_uri": f"/masks/{item.id}" if status == "ok" else None, "mask_frame": frame,
            "person_fraction": 0.25 if status == "ok" else None, "bbox": [1, 2, 3, 4] if status == "ok" else None,
            "confidence": 0.9, "status": status, "error": "file not found" if status != "ok" else None,
            "model": "m", "weights_sha256": "0" * 64, "shard": shard, "chunk": 0, "manifest_row": item.position}


def commit_shards(storage: Storage, first: int, count: int, per_shard: int = 3) -> None:
    """`count` shards of `per_shard` items with a manifest column; every 5th shard holds a 4-frame video,
    item 1 of every 4th shard is an error row."""
    ledger = Ledger(storage)
    for k in range(first, first + count):
        items = tuple(Item(k * per_shard + j, f"/archive/{k}-{j}", f"{k}-{j}", "auto") for j in range(per_shard))
        name = f"shard-{items[0].position:09d}-{k:010x}"
        extras = pa.table({"camera": [f"cam{p.position % 3}" for p in items]})
        rows = []
        for j, item in enumerate(items):
            if k % 5 == 0 and j == 0:
                rows += [row(item, name, f) for f in range(4)]
            else:
                rows.append(row(item, name, status="error" if k % 4 == 0 and j == 1 else "ok"))
        ledger.commit(Shard(name, items, extras), rows, {"units": len(items), "decode_s": 0.5 * k})


def make_output(root: str, shards: int = 12) -> Storage:
    storage = Storage(root)
    storage.write_bytes("_run.json", json.dumps({"config": {"shard_size": 3}}).encode())
    commit_shards(storage, 0, shards)
    return storage


def frames(storage: Storage) -> list[tuple]:
    """Every committed row, read the way `query` reads them, sorted."""
    output = open_output(storage.root, storage.endpoint_url)
    return sorted(output.con.sql("select * from frames").fetchall(), key=repr)


def state(storage: Storage) -> dict:
    """What readers and the planner see: rows, totals, committed shards and their marker fields."""
    ledger = Ledger(storage)
    markers = {s: {k: m.get(k) for k in MARKER_FIELDS} for s, m in ledger.done.items()}
    return {"frames": frames(storage), "counts": ledger.counts(), "names": ledger.committed_names(),
            "ids": ledger.done_ids, "markers": markers, "errors": sorted(ledger.shards_with_errors()),
            "damaged": ledger.damaged()}


def files(storage: Storage) -> dict[str, int]:
    return {f"{d}/{n}": size for d in ("_shards", METADATA_DIR, COMPACTED_DIR) for n, size in storage.sizes(d).items()}


def merged_bytes(storage: Storage) -> int:
    """The size of one part holding every shard file: targets below make several parts."""
    tables = [pq.read_table(storage.open(f"{METADATA_DIR}/{n}")) for n in storage.list(METADATA_DIR)]
    return len(parquet_bytes(pa.concat_tables(tables)))


def assert_tidy(storage: Storage) -> None:
    """After a finished compaction: parts with live records only, no marker or file of a merged shard."""
    ledger = Ledger(storage)
    assert not storage.list("_shards")
    assert sorted(storage.list(METADATA_DIR)) == sorted(f"{p}.parquet" for p in ledger.parts)
    assert sorted(storage.list(COMPACTED_DIR)) == sorted(f"{p}.parquet" for p in ledger.parts)


def test_compaction_keeps_every_row_and_count_and_a_rerun_does_nothing(tmp_path):
    storage = make_output(str(tmp_path / "out"))
    before = state(storage)
    assert len(before["frames"]) == 12 * 3 + 3 * 3 and before["counts"]["rows_error"] == 3
    target = merged_bytes(storage) // 3
    summary = compact(storage, target, log=lambda m: None)
    assert summary.shards == 12 and summary.parts_written == summary.parts_total >= 3 and not summary.skipped
    assert state(storage) == before
    assert_tidy(storage)
    assert len(open_output(storage.root).files) == summary.parts_total

    files_before, stamps = files(storage), {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    again = compact(storage, target, log=lambda m: None)
    assert again.parts_written == 0 and files(storage) == files_before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == stamps


def test_shards_committed_after_a_compaction_merge_with_its_small_part(tmp_path):
    storage = make_output(str(tmp_path / "out"), shards=4)
    target = merged_bytes(storage) * 4      # the four shards make a part under half the target
    compact(storage, target, log=lambda m: None)
    (small,) = Ledger(storage).parts
    commit_shards(storage, 4, 6)
    before = state(storage)
    summary = compact(storage, target, log=lambda m: None)
    assert (summary.shards, summary.parts_merged, summary.parts_total) == (6, 1, 1)
    assert small not in Ledger(storage).parts
    assert state(storage) == before and len(before["frames"]) == 10 * 3 + 2 * 3
    assert_tidy(storage)
    assert compact(storage, target, log=lambda m: None).parts_written == 0


def test_taking_shards_back_rewrites_their_part_without_them(tmp_path):
    storage = make_output(str(tmp_path / "out"))
    before = state(storage)
    compact(storage, 10**9, log=lambda m: None)
    ledger = Ledger(storage)
    (part,) = ledger.parts
    errors = ledger.shards_with_errors()
    assert errors == before["errors"] and len(errors) == 3
    ledger.uncommit(errors)                             # as `retry --errors` does
    after = state(storage)
    assert after["names"] == before["names"] - set(errors)
    assert after["frames"] == [f for f in before["frames"] if f[SHARD] not in errors]     
    assert after["counts"]["rows_error"] == 0 and after["damaged"] == {}
    (new,) = Ledger(storage).parts
    assert new != part and Ledger(storage).remove_leftovers() == []
    assert_tidy(storage)
    commit_shards(storage, 0, 1)                        # shard 0 (an error shard) redone: committed again
    assert Ledger(storage).committed_names() == after["names"] | {errors[0]}


def test_a_damaged_part_takes_all_its_shards_back(tmp_path):
    storage = make_output(str(tmp_path / "out"))
    before = state(storage)
    compact(storage, merged_bytes(storage) // 3, log=lambda m: None)
    ledger = Ledger(storage)
    victim, record = sorted(ledger.parts.items())[1]
    lost = set(record.table.column("shard").to_pylist())
    path = Path(storage.full(f"{METADATA_DIR}/{victim}.parquet"))
    path.write_bytes(path.read_bytes()[:-100] + b"x" * 100)      # same size, broken footer
    assert ledger.damaged(footers=False) == {}                     # sizes only: as a resume checks
    damaged = Ledger(storage).damaged()
    assert set(damaged) == lost and all(victim in why for why in damaged.values())
    Ledger(storage).uncommit(list(damaged))
    after = state(storage)
    assert after["names"] == before["names"] - lost
    assert after["frames"] == [f for f in before["frames"] if f[SHARD] not in lost]
    assert victim not in storage.list(METADATA_DIR) and Ledger(storage).remove_leftovers() == []


def test_leftovers_of_an_interrupted_compaction_are_never_read_twice(tmp_path):
    """The states a crash leaves, made by hand: merged shards' markers and files still there, a part without
    its record, a record replaced by another; readers count each shard once; the next writer tidies."""
    storage = make_output(str(tmp_path / "out"), shards=6)
    before = state(storage)
    merged = [n.split(".")[0] for n in storage.list("_shards")[:2]]
    kept = {rel: storage.read_bytes(rel) for s in merged for rel in (f"_shards/{s}.done.json", shard_parquet_path(s))}
    compact(storage, merged_bytes(storage) // 2, log=lambda m: None)
    first = sorted(Ledger(storage).parts)[0]
    # a part merged again whose old record was not deleted yet, plus an orphan part without a record
    old_record = storage.read_bytes(record_path(first))
    commit_shards(storage, 6, 1)
    compact(storage, 10**9, log=lambda m: None)
    storage.write_bytes(record_path(first), old_record)
    orphan = "part-29991231T000000-deadbeef.parquet"
    storage.write_bytes(f"{METADATA_DIR}/{orphan}", old_record)
    for rel, data in kept.items():
        storage.write_bytes(rel, data)
    now = state(storage)
    assert now["counts"]["shards"] == 7 and len(now["frames"]) == len(before["frames"]) + 3
    assert [f for f in now["frames"] if not f[0].startswith("6-")] == before["frames"]
    removed = Ledger(storage).remove_leftovers()
    assert sorted(removed) == sorted([f"{s}.parquet" for s in merged] + [orphan])
    assert state(storage) == now
    assert_tidy(storage)


def start_compact(out, target: int, pause: str) -> subprocess.Popen:
    return subprocess.Popen([CLI, "compact", str(out), "--target-size", str(target)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=environ({"HUMANSEG_FAULT_PAUSE": pause}))


@pytest.mark.parametrize("pause", ["compact-part:60:2", "compact-record:60:2", "compact-clean:60:2"])
def test_sigkill_at_each_step_then_rerun(tmp_path, pause):
    """Killed after the part file, after the record (the commit), between the markers and the files:
    readers see the same rows meanwhile, and a rerun finishes the job."""
    storage = make_output(str(tmp_path / "out"), shards=24)
    before = state(storage)
    target = merged_bytes(storage) // 4
    proc, log = start_compact(tmp_path / "out", target, pause), ""
    deadline = time.time() + 120
    while "paused at" not in log and time.time() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"compact ended before {pause}:\n{log}"
        log += line
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert "paused at" in log, log
    assert state(storage) == before
    done = subprocess.run([CLI, "compact", str(tmp_path / "out"), "--target-size", str(target)], capture_output=True,
                          text=True, env=environ({"HUMANSEG_FAULT_PAUSE": None}), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "summary: merged" in done.stderr
    assert state(storage) == before
    assert_tidy(storage)
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


def test_compaction_on_s3(s3_bucket, s3_server):
    fs, bucket = s3_bucket
    storage = make_output(f"s3://{bucket}/out", shards=8)
    before = state(storage)
    target = merged_bytes(storage) // 2
    summary = compact(storage, target, log=lambda m: None)
    assert summary.shards == 8 and summary.parts_total >= 2
    assert state(storage) == before
    assert_tidy(storage)
    listing = files(storage)
    assert compact(storage, target, log=lambda m: None).parts_written == 0
    assert files(storage) == listing
    ledger = Ledger(storage)
    ledger.uncommit(ledger.shards_with_errors())
    assert Ledger(storage).counts()["rows_error"] == 0
    assert Ledger(storage).committed_names() == before["names"] - set(before["errors"])
    assert os.environ["HUMANSEG_S3_ENDPOINT_URL"] == s3_server
