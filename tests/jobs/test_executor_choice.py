"""`--executor auto`: small jobs without a cluster run in-process (no Ray start-up), others on Ray; the
choice is the first line a run prints."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mediagen import make_image, make_video, write_manifest

from humanseg_batch.jobs.choice import choose_executor
from humanseg_batch.pipeline.manifest import ManifestReader
from humanseg_batch.pipeline.planner import plan_manifest

BIN = Path(sys.executable).parent


def test_small_local_job_runs_in_process_and_says_so_first(tmp_path, tiny_weights):
    video = make_video(tmp_path / "v.mp4", frames=30)
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": video}, {"uri": make_image(tmp_path / "a.png")}])
    proc = subprocess.run([str(BIN / "humanseg-batch"), "run", str(manifest), "-o", str(tmp_path / "out"),
                           "--weights", tiny_weights, "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stderr.splitlines()[0]
    assert first.startswith("executor: local (auto: about 31 frame(s)"), proc.stderr
    assert "ray:" not in proc.stderr


def planned(path):
    plan = plan_manifest(ManifestReader(str(path)), 64, None, set(), set)
    return plan, plan.pending(set())


def test_a_named_executor_a_cluster_address_or_a_long_job_is_kept_or_goes_to_ray(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    video = make_video(tmp_path / "v.mp4", frames=40)
    manifest = planned(write_manifest(tmp_path / "m.csv", [{"uri": video}, {"uri": tmp_path / "gone.mp4"}]))
    # another test of this session may have connected this process to Ray: then Ray is kept
    connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    assert choose_executor("auto", None, *manifest)[0] == ("ray" if connected else "local")
    assert choose_executor("ray", None, *manifest) == ("ray", "--executor")
    assert choose_executor("auto", "127.0.0.1:6379", *manifest)[0] == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_executor("auto", None, *manifest)[0] == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    many = [{"uri": video, "id": f"v{k}"} for k in range(40)]     # 40 x 40 frames > the small-job limit
    assert choose_executor("auto", None, *planned(write_manifest(tmp_path / "n.csv", many)))[0] == "ray"
