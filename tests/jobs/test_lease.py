"""One writer per output: real `humanseg-batch` processes on one OUT at once, local disk and moto S3.

The first writer is held inside its commit (Parquet written, marker not yet) with the
HUMANSEG_FAULT_PAUSE hook: the moment at which a second writer used to delete its Parquet file.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from clirun import cli, start, wait_for_line
from humanseg_batch.pipeline.lease import LEASE, LeaseHeldError, LeaseLostError, acquire
from humanseg_batch.pipeline.storage import Storage
from mediagen import make_image, read_rows, write_manifest

PAUSED = "HUMANSEG_FAULT_PAUSE: paused at commit"


def manifest_of(tmp_path, n=4):
    rows = [{"uri": str(make_image(tmp_path / "media" / f"i{k}.png", 24, 32, k)), "id": f"i{k}"} for k in range(n)]
    return write_manifest(tmp_path / "m.csv", rows)


def run_args(manifest, out, weights):
    return ["run", manifest, "-o", out, "--weights", weights, "--executor", "local", "--shard-size", "2",
            "--no-progress"]


def status_rows(out) -> int:
    code, text, err = cli("status", out, "--json")
    assert code == 0, err
    s = json.loads(text)
    return s["rows"]["ok"] + s["rows"]["error"]


def test_a_second_local_writer_is_refused_a_waiting_one_takes_over_from_a_killed_holder(tmp_path, tiny_weights):
    manifest, out = manifest_of(tmp_path), tmp_path / "out"
    args = run_args(manifest, out, tiny_weights)
    first = start(*args, env={"HUMANSEG_FAULT_PAUSE": "commit:300"}, stderr_file=tmp_path / "first.log")
    try:
        wait_for_line(tmp_path / "first.log", PAUSED, first)
        code, _, err = cli(*args)
        assert code == 2, err
        line = [ln for ln in err.splitlines() if "is being written by" in ln]
        assert len(line) == 1 and f"pid {first.pid}" in line[0] and "`humanseg-batch run" in line[0]
        assert "Traceback" not in err

        code, text, err = cli("status", out, "--json")      # readers never need the lease
        assert code == 4 and json.loads(text)["shards"]["pending"] == 2, err

        waiter = start(*args, "--wait", stderr_file=tmp_path / "waiter.log")
        wait_for_line(tmp_path / "waiter.log", "waiting for the writer", waiter)
        assert list((out / "metadata").glob("*.parquet")), "the holder's uncommitted Parquet was removed"
    finally:
        first.send_signal(signal.SIGKILL)       # the holder dies mid-commit: its pid is gone at once
        first.wait()
    assert waiter.wait(timeout=300) == 0, (tmp_path / "waiter.log").read_text()
    log = (tmp_path / "waiter.log").read_text()
    assert "taking over a stale lease" in log and f"pid {first.pid}" in log
    assert [r["id"] for r in read_rows(out)] == ["i0", "i1", "i2", "i3"]     # one row each, nothing lost
    assert status_rows(out) == 4 and not (out / LEASE).exists()


def test_two_writers_on_one_s3_output(s3_bucket, tmp_path, tiny_weights):
    fs, bucket = s3_bucket
    manifest, out = manifest_of(tmp_path), f"s3://{bucket}/out"
    args = run_args(manifest, out, tiny_weights)
    first = start(*args, env={"HUMANSEG_FAULT_PAUSE": "commit:60"}, stderr_file=tmp_path / "first.log")
    wait_for_line(tmp_path / "first.log", PAUSED, first)
    code, _, err = cli(*args)
    assert code == 2 and f"pid {first.pid}" in err, err
    waiter = start(*args, "--wait", stderr_file=tmp_path / "waiter.log")
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
    assert waiter.wait(timeout=300) == 0, (tmp_path / "waiter.log").read_text()
    log = (tmp_path / "waiter.log").read_text()
    assert "0 item(s) in 0 shard(s)" in log and "removed" not in log
    fs.invalidate_cache()
    files = [f for f in fs.find(f"{bucket}/out/metadata") if f.endswith(".parquet")]
    import pyarrow.dataset as ds
    ids = sorted(ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=["id"]).column("id").to_pylist())
    assert ids == ["i0", "i1", "i2", "i3"] and status_rows(out) == 4
    assert not fs.exists(f"{bucket}/out/{LEASE}")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_lease_is_exclusive_and_a_heartbeat_notices_a_takeover(where, tmp_path, request, monkeypatch):
    monkeypatch.setenv("HUMANSEG_LEASE_STALE_S", "5")        # a heartbeat every 0.5 s
    root = str(tmp_path / "out")
    if where == "s3":
        _, bucket = request.getfixturevalue("s3_bucket")
        root = f"s3://{bucket}/out"
    held = acquire(root, None, "test one")
    try:
        with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}, `test one`"):
            acquire(root, None, "test two")
        # S3's conditional PUT itself (moto honours If-None-Match: *): a second create is refused
        assert Storage(root).create_exclusive(LEASE, b"{}") is False
        first = json.loads(Storage(root).read_bytes(LEASE))["heartbeat"]
        time.sleep(1.5)                          # heartbeats land (on S3: PUT with If-Match on our ETag)
        assert held.lost is None and json.loads(Storage(root).read_bytes(LEASE))["heartbeat"] > first
        # someone else overwrites the lease: within a beat this holder stops writing
        Storage(root).write_bytes(LEASE, json.dumps({"token": "other", "heartbeat": time.time()}).encode())
        deadline = time.time() + 10
        while held.lost is None and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(LeaseLostError, match="taken over"):
            held.check()
    finally:
        held.release()
    assert Storage(root).exists(LEASE)          # release never deletes another writer's lease
