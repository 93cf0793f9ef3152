"""The output storage fails under a real run: it ends with exit 5 and one line, and the next run completes.

- S3 endpoint gone mid-run: the run talks to moto through a TCP relay on 127.0.0.1 that the test
  shuts down (connections refused, exactly what a dead endpoint gives) and later reopens on the same
  port with moto's data intact, so "nothing lost after the next run" can be checked.
- Disk full: OUT on a small tmpfs (needs root to mount; skipped otherwise), filled by the test.
- No credentials: the AWS chain finds nothing.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from clirun import cli, start, wait_for_line
from mediagen import make_image, read_rows, write_manifest

QUICK_S3 = {"HUMANSEG_S3_RETRY_ATTEMPTS": "2"}    # give up on a dead endpoint in seconds, not a minute


class Relay:
    """A TCP relay 127.0.0.1:port -> target that can be shut and reopened on the same port."""

    def __init__(self, target: str):
        host, port = target.replace("http://", "").split(":")
        self.target = (host, int(port))
        self.port = 0
        self.conns: list[socket.socket] = []
        self.open()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", self.port))
        self.port = self.server.getsockname()[1]
        self.server.listen(64)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def shut(self) -> None:
        self.server.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def manifest_of(tmp_path: Path, n: int, size=(24, 32)) -> Path:
    rows = [{"uri": str(make_image(tmp_path / "media" / f"i{k}.png", *size, k)), "id": f"i{k}"} for k in range(n)]
    return write_manifest(tmp_path / "m.csv", rows)


def run_args(manifest, out, weights):
    return ["run", manifest, "-o", out, "--weights", weights, "--executor", "local", "--shard-size", "2",
            "--images-per-unit", "1", "--no-progress"]


def assert_one_line_error(err: str, text: str) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if text in ln]
    assert lines and all(len(ln) < 400 for ln in lines), err


# where the run is held while the endpoint goes: in-process at the 4th unit (the first shard committed,
# the second half done); under Ray in the driver at the second commit (units run in Ray workers)
PAUSES = {"local": ("unit:5:4", "paused at unit"), "ray": ("commit:5:2", "paused at commit")}


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_s3_endpoint_gone_mid_run_then_back(executor, s3_bucket, tmp_path, tiny_weights):
    fs, bucket = s3_bucket
    relay = Relay(os.environ["HUMANSEG_S3_ENDPOINT_URL"])
    pause, paused = PAUSES[executor]
    env = dict(QUICK_S3, HUMANSEG_S3_ENDPOINT_URL=relay.endpoint, HUMANSEG_FAULT_PAUSE=pause)
    manifest, out = manifest_of(tmp_path, 8), f"s3://{bucket}/out"
    log = tmp_path / "run.log"
    args = run_args(manifest, out, tiny_weights)
    args[args.index("local")] = executor
    proc = start(*args, "--decode-tasks", "1", env=env, stderr_file=log)
    wait_for_line(log, paused, proc)
    relay.shut()                                  # the endpoint goes away while the run sleeps in the hook
    assert proc.wait(timeout=300) == 5
    err = log.read_text()
    assert_one_line_error(err, "output storage unreachable")

    code, _, err = cli("status", out, env=dict(QUICK_S3, HUMANSEG_S3_ENDPOINT_URL=relay.endpoint), timeout=120)
    assert code == 5
    assert_one_line_error(err, "output storage unreachable")

    relay.open()        # the endpoint is back, with everything written before
    code, _, err = cli("retry", out, env={"HUMANSEG_S3_ENDPOINT_URL": relay.endpoint})
    assert code == 0, err
    fs.invalidate_cache()
    files = [f for f in fs.find(f"{bucket}/out/metadata") if f.endswith(".parquet")]
    ids = sorted(ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=["id"]).column("id").to_pylist())
    assert ids == [f"i{k}" for k in range(8)]
    relay.shut()


def test_the_moto_server_killed_mid_run(s3_server, tmp_path, tiny_weights):   # s3_server: test credentials
    """The S3 server process itself dies (its data with it): exit 5 and one line, no traceback."""
    import s3fs
    from conftest import start_moto

    proc, endpoint = start_moto(tmp_path / "moto.log")
    try:
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("doomed")
        env = dict(QUICK_S3, HUMANSEG_S3_ENDPOINT_URL=endpoint, HUMANSEG_FAULT_PAUSE="unit:5:3")
        log = tmp_path / "run.log"
        run = start(*run_args(manifest_of(tmp_path, 6), "s3://doomed/out", tiny_weights), env=env, stderr_file=log)
        wait_for_line(log, "paused at unit", run)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert run.wait(timeout=300) == 5
    assert_one_line_error(log.read_text(), "output storage unreachable: s3://doomed/out/")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (mounting needs root: skipped where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root): the disk-full case needs one")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_mid_run_then_space_again(small_disk, tmp_path, tiny_weights):
    manifest, out = manifest_of(tmp_path, 10, size=(160, 200)), small_disk / "out"
    args = run_args(manifest, out, tiny_weights)
    filler = small_disk / "filler"
    # room for the run record, the lease, the plan (OUT/_plan.json and _plan/: 4 KiB pages on tmpfs) and a few files
    filler.write_bytes(b"\0" * (1024 * 1024 - 40 * 1024))
    code, _, err = cli(*args)
    assert code == 5, err
    assert_one_line_error(err, f"disk full at {out}")
    assert len(read_rows(out)) < 10                              # it stopped part-way

    filler.unlink()
    strays = [out / "masks" / "ab" / "x.png.tmp-0badf00d", out / "_shards" / "s.done.json.tmp-0badf00d"]
    for stray in strays:        # what a write killed half-way leaves (a full disk's are removed at once)
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"")
    code, _, err = cli(*args)
    assert code == 0, err
    assert "removed 2 temporary file(s)" in err
    assert [r["id"] for r in read_rows(out)] == sorted(f"i{k}" for k in range(10))
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "temp files left behind"
    code, _, _ = cli("status", out)
    assert code == 0


def test_no_credentials_for_the_output(s3_bucket, tmp_path, tiny_weights):
    _, bucket = s3_bucket
    manifest, out = manifest_of(tmp_path, 2), f"s3://{bucket}/out"
    nothing = {k: None for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env = dict(nothing, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    for args in (run_args(manifest, out, tiny_weights), ["status", out], ["retry", out]):
        code, _, err = cli(*args, env=env)
        assert code == 5, (args, err)
        assert_one_line_error(err, f"no credentials for s3://{bucket}/out")
    code, _, err = cli(*run_args(manifest, out, tiny_weights))      # with credentials: it works
    assert code == 0, err
