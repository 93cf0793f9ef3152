"""The `humanseg-batch` command in tests: the installed entry point as a real process (what a user's
shell runs), or in this process through click's runner (`invoke`), when exit codes and output suffice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "humanseg-batch")


def environ(env: dict | None) -> dict:
    """This process's environment with `env` applied (a None value removes the variable)."""
    merged = dict(os.environ, **(env or {}))
    return {k: v for k, v in merged.items() if v is not None}


def cli(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> tuple[int, str, str]:
    """Run a command to its end: (exit code, stdout, stderr)."""
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=environ(env),
                          cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def start(*args, env: dict | None = None, stderr_file: Path) -> subprocess.Popen:
    """Start a command in the background, its stderr into a file."""
    with open(stderr_file, "w") as err:
        return subprocess.Popen([CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env=environ(env))


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """Poll a process's stderr file until it holds `text`; fail if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = path.read_text()
        if text in log:
            return log
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before {text!r}:\n{log}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{path.read_text()}")


def invoke(*args) -> tuple[int, str]:
    """Run a command in this process: (exit code, stdout and stderr together)."""
    from click.testing import CliRunner

    from humanseg_batch.jobs.cli import cli as command
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def status_json(out) -> tuple[int, dict]:
    """`status OUT --json`, parsed."""
    code, text = invoke("status", out, "--json")
    return code, json.loads(text)
