"""Crash safety: the CLI as a subprocess, SIGKILLed at chosen moments, rerun each time.

The moments are hit exactly with the HUMANSEG_FAULT_PAUSE test hook (pipeline/faults.py):
the run announces the pause on stderr and sleeps there until the test kills it.
"""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from humanseg_batch.pipeline.write import read_mask
from mediagen import make_image, make_video, read_rows, write_manifest

CLI = str(Path(sys.executable).parent / "humanseg-batch")
VIDEO_FRAMES = 20


def corpus(tmp_path):
    """11 items in 4 shards of 3: images, and a 2-chunk video in the 2nd and the 4th shard."""
    root = tmp_path / "media"
    rows = [{"uri": str(make_image(root / f"i{k}.png", 40, 56, k)), "id": f"i{k}"} for k in range(9)]
    for k in (0, 1):
        rows.append({"uri": str(make_video(root / f"v{k}.avi", frames=VIDEO_FRAMES, fps=10)), "id": f"v{k}"})
    order = ["i0", "i1", "i2", "i3", "v0", "i4", "i5", "i6", "i7", "v1", "i8"]
    rows.sort(key=lambda r: order.index(r["id"]))
    expected = {(i, None) for i in order if i.startswith("i")}
    expected |= {(v, f) for v in ("v0", "v1") for f in range(VIDEO_FRAMES)}
    return write_manifest(tmp_path / "m.csv", rows), expected


def start(args, pause=None):
    env = dict(os.environ, HUMANSEG_FAULT_PAUSE=pause or "")
    proc = subprocess.Popen([CLI, *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    return proc, lines, reader


def kill_when_paused(args, pause, timeout=120):
    """Run until the hook says it paused, then SIGKILL; return the log up to there."""
    proc, lines, _ = start(args, pause)
    log, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            log.append(lines.get(timeout=1))
        except queue.Empty:
            assert proc.poll() is None, f"run ended before pausing at {pause}:\n{''.join(log)}"
            continue
        if "HUMANSEG_FAULT_PAUSE: paused at" in log[-1]:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return "".join(log)
    proc.kill()
    pytest.fail(f"no pause at {pause} within {timeout}s:\n{''.join(log)}")


def run_to_end(args, timeout=180):
    proc, lines, reader = start(args)
    code = proc.wait(timeout=timeout)
    reader.join(timeout=30)
    return code, "".join(lines.queue)


def committed(out: Path) -> dict[str, int]:
    """Marker -> mtime, and mask file -> mtime for every row of a committed shard."""
    stamps = {}
    for marker in (out / "_shards").glob("*.done.json"):
        stamps[marker.name] = marker.stat().st_mtime_ns
        parquet = out / "metadata" / marker.name.replace(".done.json", ".parquet")
        for uri in pq.read_table(parquet, columns=["mask_uri"]).column("mask_uri").to_pylist():
            if uri:
                stamps[uri] = Path(uri).stat().st_mtime_ns
    return stamps


def assert_unchanged(before: dict[str, int], out: Path) -> None:
    after = committed(out)
    assert {k: after.get(k) for k in before} == before, "a committed shard was recomputed"


def assert_complete(out: Path, expected: set) -> None:
    rows = read_rows(out)
    keys = [(r["id"], r["frame_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert set(keys) == expected, f"missing {expected - set(keys)}, extra {set(keys) - expected}"
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert read_mask(r["mask_uri"], r["mask_frame"]).shape == (r["height"], r["width"])


def test_sigkill_while_planning_mid_shard_and_before_the_marker(tmp_path, tiny_weights):
    manifest, expected = corpus(tmp_path)
    out = tmp_path / "out"
    args = ["run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local", "--shard-size", "3",
            "--images-per-unit", "1", "--video-chunk-seconds", "1", "--batch-size", "4", "--no-progress"]
    shards = out / "_shards"

    # 1. killed while planning: the run record exists, nothing else
    kill_when_paused(args, "planned:60")
    assert (out / "_run.json").exists() and not shards.exists()

    # 2. rerun, killed mid-shard: shard 1 (3 image units) committed, shard 2 has masks of i3 and i4
    #    and is about to decode v0's first chunk (its 6th unit), but has no Parquet file yet
    kill_when_paused(args, "unit:60:6")
    assert len(list(shards.glob("*.done.json"))) == 1
    assert len(list((out / "metadata").glob("*.parquet"))) == 1
    assert len(list((out / "masks").rglob("*.png"))) == 5
    before = committed(out)

    # 3. rerun, killed between the Parquet write and the marker of shard 3
    log = kill_when_paused(args, "commit:60:2")
    assert "1 shard(s) already committed" in log
    assert len(list(shards.glob("*.done.json"))) == 2
    assert len(list((out / "metadata").glob("*.parquet"))) == 3          # shard 3's has no marker
    assert_unchanged(before, out)
    before = committed(out)

    # 4. rerun to the end: the orphan Parquet is dropped and shard 3 redone whole, with shard 4
    code, log = run_to_end(args)
    assert code == 0, log
    assert "removed 1 uncommitted shard file(s)" in log and "2 shard(s) already committed" in log
    assert len(list(shards.glob("*.done.json"))) == 4 and not list(shards.glob("*.failed.json"))
    assert_unchanged(before, out)
    assert_complete(out, expected)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]    # no temp files left visible


@pytest.mark.slow
def test_sigkill_of_the_ray_driver_mid_run(tmp_path, tiny_weights):
    """The driver commits shards; killed before a marker, its Ray processes go too, and a rerun completes."""
    manifest, expected = corpus(tmp_path)
    out = tmp_path / "out"
    args = ["run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "ray", "--shard-size", "6",
            "--images-per-unit", "3", "--video-chunk-seconds", "1", "--batch-size", "4", "--no-progress"]
    kill_when_paused(args, "commit:60:2")      # 2 shards: the first committed, the second's marker not written
    before = committed(out)
    assert len([k for k in before if k.endswith(".done.json")]) == 1
    code, log = run_to_end(args)
    assert code == 0, log
    assert "removed 1 uncommitted shard file(s)" in log
    assert_unchanged(before, out)
    assert_complete(out, expected)
