"""Cluster path: a real `ray start --head` node on loopback, jobs submitted through the Jobs API."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediagen import read_rows, write_manifest

from humanseg_batch.jobs.ray_executor import SINGLE_NODE_ENV

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(temp: Path) -> tuple[subprocess.Popen, str] | None:
    """`ray start --head --block` in its own process group, up when it runs a job; None if it died or
    never answered (a port picked here was taken before Ray bound it: the caller tries new ports)."""
    from ray.job_submission import JobSubmissionClient

    gcs, dash = free_port(), free_port()
    # every port of its own: another Ray on this machine (e.g. the session's embedded one) holds the defaults,
    # and a job agent that cannot bind leaves the head without a way to run jobs
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                   f"--ray-client-server-port={free_port()}"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ['PATH']}")  # as on a node with the package installed
    env[SINGLE_NODE_ENV] = "0"   # else Ray advertises eth0 for --node-ip-address=127.0.0.1 (jobs/ray_executor.py)
    env.pop("RAY_ADDRESS", None)
    with open(temp / "ray-start.log", "a") as log:        # a file: a full pipe would stall the head
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", f"--temp-dir={temp}",
             "--include-dashboard=true", "--disable-usage-stats", *agent_ports],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:   # up = a job can be submitted (the job agent starts after the dashboard) ...
            job = JobSubmissionClient(address).submit_job(entrypoint="true")
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
            continue
        # ... to this head: its driver log appears under this head's temp dir, not another Ray's
        while time.time() < deadline and not list(temp.glob(f"session_*/logs/job-driver-{job}.log")):
            time.sleep(0.5)
        if list(temp.glob(f"session_*/logs/job-driver-{job}.log")):
            return proc, address
        break
    stop_head(proc)
    return None


def stop_head(proc: subprocess.Popen) -> None:
    """Stop the head started here: its own process group (also what is left of it after `ray start` died)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    for _ in range(3):
        started = start_head(temp)
        if started:
            break
    else:
        pytest.fail(f"the Ray head did not come up in 3 tries:\n{(temp / 'ray-start.log').read_text()[-3000:]}")
    proc, address = started
    yield address
    stop_head(proc)


def cluster_env():
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    return env


def test_submit_runs_on_the_cluster(ray_head, media, tmp_path, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media[k]), "id": k} for k in ("a", "b", "v2")])
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "humanseg-batch"), "submit", str(manifest), "-o", str(out),
                           "--weights", tiny_weights, "--address", ray_head, "--no-progress",
                           "--video-chunk-seconds", "1"],
                          env=cluster_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted job" in proc.stderr and "SUCCEEDED" in proc.stderr
    # the run itself (its log, followed on stdout) says where the cluster's dashboard is and which Ray job it is
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+; Ray job [0-9a-f]+", proc.stdout), proc.stdout[-3000:]
    rows = read_rows(out)
    assert len(rows) == 2 + 24 and all(r["status"] == "ok" for r in rows)


def test_plain_ray_job_submit_works_too(ray_head, media, tmp_path, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media["a"]), "id": "a"}])
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", ray_head, "--",
                           str(BIN / "humanseg-batch"), "run", str(manifest), "-o", str(out),
                           "--weights", tiny_weights, "--no-progress"],
                          env=cluster_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["id"] for r in read_rows(out)] == ["a"]
