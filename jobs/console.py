"""What a run says on stderr: plain lines or JSON lines, `--quiet` for schedulers, and a summary line always.

stdout stays free for what a command is asked for (a job id, a query's rows); everything here goes to stderr.
"""
from __future__ import annotations

import json
import time

import click

# One process runs one command, so module state is the process's console settings.
_settings = {"quiet": False, "log_format": "text"}


def _configure(ctx, param, value):
    # Only a value that was given changes the settings, so `humanseg-batch --quiet run ...` is not undone
    # by the run command's own (absent) --quiet.
    if value:
        _settings[param.name] = value
    return value


def options(f):
    """--quiet and --log-format, for the group and for each command that runs work (either position works)."""
    f = click.option("--log-format", type=click.Choice(["text", "json"]), default=None, expose_value=False,
                     is_eager=True, callback=_configure, envvar="HUMANSEG_LOG_FORMAT",
                     help="stderr as text lines, or one JSON object a line for log collectors [text].")(f)
    return click.option("--quiet", "-q", is_flag=True, default=None, expose_value=False, is_eager=True,
                        callback=_configure, envvar="HUMANSEG_QUIET",
                        help="Only errors and the final summary line; no progress bar.")(f)


def show_progress() -> bool:
    """A progress bar only where a person reads plain text."""
    return not _settings["quiet"] and _settings["log_format"] == "text"


def log(message: str, level: str = "info", **fields) -> None:
    """A line for the person or the log collector; info lines are dropped under --quiet."""
    if not (_settings["quiet"] and level == "info"):
        _emit(message, level, fields)


def summary_line(summary, output: str) -> None:
    """The run's last line, printed whatever --quiet says: rows ok/error, frames per second, where the output is."""
    rows = summary.rows_ok + summary.rows_error
    rate = rows / summary.seconds if summary.seconds > 0 else 0.0
    text = (f"summary: rows ok {summary.rows_ok}, error {summary.rows_error}; {rate:.1f} frames/s "
            f"(images and video frames) in {summary.seconds:.1f}s; output {output}; exit {summary.exit_code}")
    _emit(text, "error" if summary.shards_failed else "info",
          {"event": "summary", "rows_ok": summary.rows_ok, "rows_error": summary.rows_error,
           "frames_per_s": round(rate, 2), "shards_failed": len(summary.shards_failed),
           "seconds": round(summary.seconds, 1), "output": output, "exit_code": summary.exit_code})


def _emit(message: str, level: str, fields: dict) -> None:
    if _settings["log_format"] == "json":
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
                  "message": message, **fields}
        click.echo(json.dumps(record, default=str), err=True)
    else:
        click.echo(message, err=True)
