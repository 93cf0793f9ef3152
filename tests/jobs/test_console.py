"""What a run prints on stderr: no library warnings on a default run, --quiet and --log-format json for
schedulers, and the summary line (rows ok/error, frames/s, output) always last."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mediagen import write_manifest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Library noise: Python warnings, Ray's Python and C++ log lines, worker output forwarded to the driver.
NOISE = re.compile(r"Warning\b|WARNING|^\[\d{4}-\d\d-\d\d [\d:,.]+ [WE] \d+|^\((\w+ )?pid=")


def humanseg(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    # As a user's shell has it: tests/conftest.py sets Ray's auth mode for the suite, a user does not.
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([str(BIN / "humanseg-batch"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def stderr_lines(proc) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", proc.stderr) if line.strip()]


def test_default_run_on_the_examples_prints_no_library_warnings(tmp_path):
    out = tmp_path / "out"
    proc = humanseg(["run", REPO / "examples" / "manifest.csv", "--output", out], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = stderr_lines(proc)
    assert [line for line in lines if NOISE.search(line)] == []
    assert re.match(r"summary: rows ok \d+, error 0; [\d.]+ frames/s .*; output " + re.escape(str(out)), lines[-1])
    assert proc.stdout == ""


def test_quiet_json_prints_the_summary_alone_as_json(tmp_path, media, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": media["a"]}, {"uri": media["b"]}])
    out = tmp_path / "out"
    proc = humanseg(["--log-format", "json", "run", manifest, "-o", out, "--weights", tiny_weights,
                     "--executor", "local", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["event"] == "summary" and record["rows_ok"] == 2 and record["rows_error"] == 0
    assert record["output"] == str(out) and record["exit_code"] == 0 and record["frames_per_s"] > 0


def test_json_log_format_writes_only_json_lines(tmp_path, media, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": media["a"]}, {"uri": media["v2"]}])
    proc = humanseg(["run", manifest, "-o", tmp_path / "out", "--weights", tiny_weights, "--executor", "local",
                     "--log-format", "json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in stderr_lines(proc)]  # a plain line (a library's, a bar) fails here
    assert len(records) > 1 and all(r["level"] == "info" for r in records)
    assert records[-1]["event"] == "summary" and records[-1]["rows_ok"] == 1 + 24


def test_summary_line_survives_quiet_when_rows_fail(tmp_path, media, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": media["a"]}, {"uri": tmp_path / "missing.png"}])
    proc = humanseg(["run", manifest, "-o", tmp_path / "out", "--weights", tiny_weights, "--executor", "local",
                     "-q"], tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("summary: rows ok 1, error 1;") and lines[0].endswith("exit 3")
