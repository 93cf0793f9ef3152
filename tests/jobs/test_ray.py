"""The Ray executor against a real (embedded) Ray: actor death, poisoned units (same output as local:
test_same_output.py)."""
import os
import re
import signal
import threading
import time

from humanseg_batch.jobs.cli import execute
from humanseg_batch.jobs.config import RunConfig
from humanseg_batch.pipeline.write import read_mask
from mediagen import make_image, make_video, read_rows, write_manifest


def config(manifest, out, weights, **kw):
    base = dict(manifest=str(manifest), output=str(out), weights=weights, shard_size=2, video_chunk_seconds=1.0,
                batch_size=4, images_per_unit=2, progress=False, task_retries=1)
    return RunConfig(**{**base, **kw})


def started_by_this_process(pid: int) -> bool:
    import psutil

    return any(p.pid == os.getpid() for p in psutil.Process(pid).parents())


def test_killing_a_model_actor_mid_run_loses_and_duplicates_nothing(ray_local, tmp_path, tiny_weights, capsys):
    import psutil

    root = tmp_path / "media"
    rows = [{"uri": str(make_image(root / f"i{i}.png", 120, 160, i)), "id": f"i{i}"} for i in range(30)]
    rows.append({"uri": str(make_video(root / "long.avi", frames=120, fps=10, size=(160, 120))), "id": "long"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", execute(
        config(manifest, out, tiny_weights, batch_size=1, images_per_unit=1, shard_size=4))))
    thread.start()
    log, killed, deadline = "", None, time.time() + 120
    while time.time() < deadline and killed is None and thread.is_alive():
        log += capsys.readouterr().err
        pids = re.search(r"model actors: 1 on .*, pid (\d+)", log)
        masks = list((out / "masks").rglob("*.png")) if (out / "masks").exists() else []
        if pids and len(masks) >= 3:
            # this run's actor (its pid from the run's log), a process under this test's Ray
            killed = int(pids.group(1))
            assert "ray::ModelActor" in " ".join(psutil.Process(killed).cmdline())
            assert started_by_this_process(killed)
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=300)
    log += capsys.readouterr().err
    assert killed, "the run ended before the actor could be killed"
    assert result["code"] == 0, log
    # recovery happened: the pool got a new process, and it answered requests after the kill (so the
    # kill came before the last inference, and the request in flight was retried there)
    restart = re.search(r"model actors restarted during the run: 1 of 1 \(since then: pid (\d+) served (\d+)", log)
    assert restart, log
    assert int(restart.group(1)) != killed and int(restart.group(2)) > 0
    got = read_rows(out)
    keys = [(r["id"], r["frame_index"]) for r in got]
    assert len(keys) == len(set(keys)) == 30 + 120
    assert all(r["status"] == "ok" for r in got)
    for r in got[::17]:
        assert read_mask(r["mask_uri"], r["mask_frame"]).shape == (r["height"], r["width"])


def test_poisoned_unit_fails_its_shard_and_the_rest_completes(ray_local, media, tmp_path, tiny_weights):
    poison = make_image(tmp_path / "media" / "__poison__.png", 40, 40, 5)
    rows = [{"uri": str(media[k]), "id": k} for k in ("a", "b", "c")] + [{"uri": str(poison), "id": "p"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    assert execute(config(manifest, out, tiny_weights, shard_size=1)) == 4
    assert sorted(r["id"] for r in read_rows(out)) == ["a", "b", "c"]
    failed = list((out / "_shards").glob("*.failed.json"))
    assert len(failed) == 1
    record = failed[0].read_text()
    assert "__poison__" in record and ("crash" in record.lower() or "died" in record.lower())
    assert len(list((out / "_shards").glob("*.done.json"))) == 3
