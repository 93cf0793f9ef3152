"""`humanseg-batch compact OUT`: merge committed shard files into large part files (pipeline/compact.py)."""
from __future__ import annotations

import re
import shlex
import sys

import click

from humanseg_batch.pipeline.compact import DEFAULT_TARGET_BYTES, compact as compact_output
from humanseg_batch.pipeline.lease import LeaseHeldError
from humanseg_batch.pipeline.lease import holding as holding_lease
from humanseg_batch.pipeline.ledger import read_run_record
from humanseg_batch.pipeline.storage import Storage

from . import console
from .runner import EXIT_FAILED_SHARDS, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, WAIT_HELP

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'256MB', '1GiB', '500000000' -> bytes (MB = 10^6 bytes, MiB = 2^20)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size like 256MB, 1GiB or 500000000", param_hint="--target-size")
    size = int(float(found.group(1)) * _UNITS[found.group(2).lower()])
    if size < 1:
        raise click.BadParameter("must be at least 1 byte", param_hint="--target-size")
    return size


@click.command(epilog=f"Exit codes: {EXIT_OK} done (or nothing to do); {EXIT_FAILED_SHARDS} some committed files "
                      f"did not match their records and were left as they are (run `humanseg-batch retry OUT`); "
                      f"{EXIT_USAGE} no run in OUT, a bad option, or OUT is being written by another run; "
                      f"{EXIT_STORAGE} the output storage failed (rerun: every step is safe to redo).")
@click.argument("out")
@click.option("--target-size", default=f"{DEFAULT_TARGET_BYTES // 2**20}MiB", show_default=True,
              help="Size of a part file (suffixes KB MB GB, KiB MiB GiB), estimated by merging a few shard "
                   "files on trial. 128-512 MB suits DuckDB, Spark, pandas and polars.")
@click.option("--endpoint-url", help="S3-compatible endpoint (or HUMANSEG_S3_ENDPOINT_URL).")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@console.options
def compact(out, target_size, endpoint_url, wait):
    """Merge OUT's committed shard Parquet files into part files of about --target-size.

    One Parquet file per shard makes millions of small files at archive scale; after `compact`
    `status`, `query` and any reader open a few large files instead. Resume, `retry` and `retry
    --errors` work as before (a part is rewritten without the shards taken back). Safe to stop at
    any moment and to rerun: a rerun finishes what was left and otherwise does nothing. Holds OUT's
    lease, like `run`: it waits for no run unless --wait.

    \b
    Example:
      humanseg-batch compact s3://bucket/masks --target-size 512MB
    """
    sys.exit(compact_out(out, parse_size(target_size), endpoint_url, wait))


def compact_out(out: str, target: int, endpoint_url: str | None = None, wait: bool = False) -> int:
    """Compact OUT under its lease, saying what it does on stderr; the exit code. (`run` can call this
    after its own lease is released, for a `run --compact`.)"""
    command = shlex.join(["humanseg-batch", *sys.argv[1:]])[:300]
    try:
        with holding_lease(out, endpoint_url, command, wait=wait, log=console.log) as lease:
            storage = Storage(out, endpoint_url, writer_check=lease.check)
            if read_run_record(storage) is None:
                console.log(f"error: {out} holds no humanseg-batch run (no _run.json)", level="error")
                return EXIT_USAGE
            summary = compact_output(storage, target, log=console.log)
    except LeaseHeldError as exc:
        console.log(f"error: {exc}", level="error")
        return EXIT_USAGE
    for name, why in list(summary.skipped.items())[:5]:
        console.log(f"left as it is: {name}: {why}", level="warning")
    code = EXIT_FAILED_SHARDS if summary.skipped else EXIT_OK
    if summary.skipped:
        console.log(f"{len(summary.skipped)} file(s) do not match their records; next: humanseg-batch retry {out}",
                    level="warning")
    console.log(f"summary: merged {summary.shards} shard file(s) and {summary.parts_merged} small part(s) into "
                f"{summary.parts_written} part(s) ({summary.bytes_written / 1e6:.1f} MB) in {summary.seconds:.1f}s; "
                f"{out} now has {summary.parts_total} part(s) and {summary.unmerged} shard file(s); exit {code}",
                level="summary", event="summary", shards=summary.shards, parts_written=summary.parts_written,
                parts_total=summary.parts_total, unmerged=summary.unmerged, skipped=len(summary.skipped),
                seconds=round(summary.seconds, 1), exit_code=code)
    return code
