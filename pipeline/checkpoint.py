"""Run record and the shard commit protocol.

A shard is committed when its marker `_shards/<shard>.done.json` exists. The marker is
written after the shard's masks and its Parquet file, so a committed shard's rows always
point to masks that exist. A Parquet file without a marker is a leftover of an interrupted
run and is removed before new work starts; a rerun then redoes that shard whole.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .faults import pause_point
from .storage import Storage
from .write import (METADATA_DIR, RUN_RECORD, SHARDS_DIR, parquet_bytes, rows_table, shard_marker_path,
                    shard_parquet_path)


class RunMismatchError(ValueError):
    """OUT holds a run made with settings that would give different results."""


@dataclass
class RunState:
    done: dict[str, dict] = field(default_factory=dict)      # shard -> marker (stats + ids)
    failed: dict[str, dict] = field(default_factory=dict)    # shard -> failure record

    @property
    def done_ids(self) -> set[str]:
        return {i for marker in self.done.values() for i in marker.get("ids", ())}


def read_run_record(storage: Storage) -> dict | None:
    if not storage.exists(RUN_RECORD):
        return None
    return json.loads(storage.read_bytes(RUN_RECORD))


def check_or_write_run_record(storage: Storage, record: dict, compat_keys: list[str]) -> dict | None:
    """Write the run record, or check that an existing one has the same result-changing settings."""
    old = read_run_record(storage)
    if old is not None:
        diffs = [f"{k}: {old.get('config', {}).get(k)!r} -> {record['config'].get(k)!r}"
                 for k in compat_keys if old.get("config", {}).get(k) != record["config"].get(k)]
        if diffs:
            raise RunMismatchError(
                f"{storage.root} already holds a run with different settings ({'; '.join(diffs)}). "
                "Use another --output, or pass --overwrite to delete its results and start over.")
        record = dict(record, created=old.get("created", record.get("created")), runs=old.get("runs", 0) + 1)
    storage.write_bytes(RUN_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
    return old


def load_state(storage: Storage) -> RunState:
    """Committed and failed shards, read from the markers."""
    names = storage.list(SHARDS_DIR)
    blobs = storage.read_many([f"{SHARDS_DIR}/{n}" for n in names if n.endswith(".json")])
    state = RunState()
    for rel, blob in blobs.items():
        name = rel.rsplit("/", 1)[-1]
        if name.endswith(".done.json"):
            state.done[name[: -len(".done.json")]] = json.loads(blob)
        elif name.endswith(".failed.json"):
            state.failed[name[: -len(".failed.json")]] = json.loads(blob)
    for shard in state.done:
        state.failed.pop(shard, None)
    return state


def remove_uncommitted(storage: Storage, state: RunState) -> list[str]:
    """Delete Parquet files of shards without a marker (leftovers of an interrupted run)."""
    removed = []
    for name in storage.list(METADATA_DIR):
        if name.endswith(".parquet") and name[: -len(".parquet")] not in state.done:
            storage.remove(f"{METADATA_DIR}/{name}")
            removed.append(name)
    return removed


def commit_shard(storage: Storage, shard: str, ids: list[str], rows: list[dict], extras, stats: dict) -> dict:
    """Write the shard's Parquet, then its marker (last). Masks must already be written."""
    table = rows_table(rows, extras)
    storage.write_bytes(shard_parquet_path(shard), parquet_bytes(table))
    pause_point("commit")
    marker = dict(stats, shard=shard, rows=table.num_rows, ids=ids, committed_at=time.time())
    storage.write_bytes(shard_marker_path(shard), json.dumps(marker).encode())
    storage.remove(shard_marker_path(shard, "failed"))
    return marker


def record_failure(storage: Storage, shard: str, reason: str, ids: list[str]) -> None:
    record = {"shard": shard, "reason": reason, "ids": ids, "failed_at": time.time()}
    storage.write_bytes(shard_marker_path(shard, "failed"), json.dumps(record).encode())


def uncommit(storage: Storage, shard: str) -> None:
    """Take a shard back (for `retry --errors`): marker first, so a crash leaves it merely unfinished."""
    storage.remove(shard_marker_path(shard))
    storage.remove(shard_parquet_path(shard))
