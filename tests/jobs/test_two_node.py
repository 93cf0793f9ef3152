"""Two Ray nodes on loopback: a head, and a second `ray start --address` node that advertises a GPU.
The model actor is placed on the GPU node, decode units run on both, and the output equals a local run's."""
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediagen import write_manifest

from humanseg_batch.jobs.ray_executor import SINGLE_NODE_ENV

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
PY = sys.executable
# Ray turns 127.0.0.1 (a node's address, a GCS address) into the address that routes outwards unless
# its single-node switch is on (jobs/ray_executor.py), and `ray start --address` refuses to run with
# that switch: the nodes' processes and the drivers get the switch, `ray start` itself is let through.
LOOPBACK_RAY = ("import sys, ray._private.services as s, ray._private.ray_constants as c; "
                "c.ENABLE_RAY_CLUSTER = True; s.resolve_ip_for_localhost = lambda host: host; "
                "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")
NODES = ("import json, ray; ray.init(address='{a}', logging_level='ERROR'); "
         "print(json.dumps([(n['NodeID'], n['NodeManagerAddress'], n['Resources'].get('GPU', 0)) "
         "for n in ray.nodes() if n['Alive']]))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ports() -> list[str]:
    """Every port of its own: other Rays on this machine hold the defaults."""
    return [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "metrics-export-port", "runtime-env-agent-port",
                                                    "node-manager-port", "object-manager-port")]


def ray_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "a") as f:     # a file: a full pipe would stall the node
        return subprocess.Popen([PY, "-c", LOOPBACK_RAY, "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *own_ports(), *args],
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """The node's own process group: `ray start` and everything it started."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    temp = tmp_path_factory.mktemp("ray2")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    env[SINGLE_NODE_ENV] = "0"
    address = f"127.0.0.1:{free_port()}"
    head = ray_node(["--head", f"--port={address.split(':')[1]}", "--num-cpus=1", "--num-gpus=0",
                     "--include-dashboard=false", f"--temp-dir={temp}",
                     f"--ray-client-server-port={free_port()}"], temp / "head.log", env)
    gpu = ray_node([f"--address={address}", "--num-cpus=2", "--num-gpus=1"], temp / "gpu.log", env)
    try:
        nodes, deadline = [], time.time() + 180
        while len(nodes) < 2 and time.time() < deadline and head.poll() is None:
            time.sleep(2)
            proc = subprocess.run([PY, "-c", NODES.format(a=address)], env=env, capture_output=True, text=True,
                                  timeout=120)
            nodes = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
        logs = "".join((temp / n).read_text()[-2000:] for n in ("head.log", "gpu.log"))
        assert len(nodes) == 2, f"the two nodes did not come up:\n{logs}"
        yield address, nodes, env
    finally:
        stop(gpu)
        stop(head)


def same_output_checks():
    path = Path(__file__).with_name("test_same_output.py")
    spec = importlib.util.spec_from_file_location("same_output_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SETTINGS_THAT_DIFFER = module.SETTINGS_THAT_DIFFER | {"address"}
    return module


def test_model_actor_on_the_gpu_node_units_on_both_same_output_as_local(two_nodes, media, tmp_path, busy_weights):
    address, nodes, env = two_nodes
    assert {ip for _, ip, _ in nodes} == {"127.0.0.1"}                # loopback only, every node
    gpu_node = next(node_id for node_id, _, gpus in nodes if gpus)
    rows = [{"uri": str(media[k]), "id": k, "tag": k.upper()} for k in ("a", "b", "c", "v1", "v2")]
    rows.append({"uri": str(tmp_path / "missing.png"), "id": "missing"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    same = ["--weights", busy_weights, "--shard-size", "2", "--video-chunk-seconds", "1", "--batch-size", "4",
            "--images-per-unit", "2", "--task-retries", "1", "--no-progress"]
    runs = {}
    for name, extra in (("local", ["--executor", "local"]), ("cluster", ["--address", address])):
        runs[name] = subprocess.run([str(BIN / "humanseg-batch"), "run", str(manifest), "-o", str(tmp_path / name),
                                     *same, *extra], env=env, capture_output=True, text=True, timeout=600)
        assert runs[name].returncode == 3, runs[name].stderr[-3000:]     # 3: the missing file's error row
    log = runs["cluster"].stderr
    assert log.startswith("executor: ray (auto: a Ray cluster address is given)"), log
    actor = re.search(r"model actors: 1 on cpu .*; node ([0-9a-f]+)", log)
    assert actor and gpu_node.startswith(actor.group(1)), log
    assert "hold GPUs but their node's torch sees no CUDA" in log
    assert "work units ran on 2 node(s)" in log, log
    assert same_output_checks().assert_same_output(tmp_path / "local", tmp_path / "cluster") == 3 + 4 + 3
