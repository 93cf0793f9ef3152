"""Every command ends with its documented exit code, never an abort: `status` was seen to exit 134
("terminate called without an active exception", a thread still running in the interpreter's
teardown) right after a Ray run. Repeated, because such an end is a race."""
import subprocess
import sys
from pathlib import Path

from mediagen import make_image, make_video, write_manifest

BIN = Path(sys.executable).parent


def command(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "humanseg-batch"), *map(str, args)], capture_output=True, text=True, timeout=600)


def assert_clean(proc: subprocess.CompletedProcess, code: int) -> None:
    assert "terminate called" not in proc.stderr and "Fatal Python error" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-3000:]


def test_run_status_and_query_exit_cleanly_after_ray_and_local_runs(tmp_path, tiny_weights):
    # a missing file gives an error row: `status` then scans the Parquet for its errors (pyarrow.dataset)
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": make_video(tmp_path / "v.mp4", frames=12)},
                                                   {"uri": make_image(tmp_path / "a.png")},
                                                   {"uri": tmp_path / "missing.png"}])
    for round_, executor in enumerate(["ray", "local", "ray"]):
        out = tmp_path / f"out{round_}"
        assert_clean(command("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", executor,
                             "--no-progress"), 3)
        for _ in range(3):
            assert_clean(command("status", out), 3)
        assert_clean(command("query", out, "select count(*) as n from items"), 0)
