"""What earlier runs planned, kept in OUT so an incremental run reads only the rows appended since.

    OUT/_plan.json                 shard size, mode, and per segment: rows, sha256 of the ids up to its
                                   end, and for CSV / JSON Lines manifests the byte length and sha256
                                   of the manifest file at that run
    OUT/_plan/shards-<k>.npz       segment k's shards (first row, last row, items, id digest) and the
                                   rows dropped as duplicates
    OUT/_plan/ids-<k>.bin          the MD5 of every id segment k kept, sorted (16 bytes each); the 64
                                   partitions by the top bits are byte ranges, listed in shards-<k>.npz,
                                   so a later run reads one at a time (25 MB at 100 M ids)

Ids are hashed with DuckDB's md5_number, checked against hashlib's MD5 before any is written or read,
so a DuckDB that changed the function cannot mix two hashes: the run then plans from the whole manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile

import duckdb
import numpy as np

from .storage import Storage

PLAN_STATE = "_plan.json"
PLAN_DIR = "_plan"
PARTS = 64
IDS = np.dtype([("a", "<u8"), ("b", "<u8")])
SPILL = np.dtype([("a", "<u8"), ("b", "<u8"), ("p", "<i8")])
MD5_SQL = "SELECT (md5_number(k) >> 64)::UBIGINT AS a, (md5_number(k) & 18446744073709551615::UHUGEINT)::UBIGINT AS b"


def md5_matches_hashlib(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether DuckDB's md5_number is the MD5 the stored ids were hashed with (little-endian 128 bits)."""
    probe = "humanseg-batch"
    got = con.sql(f"SELECT md5_number('{probe}')::VARCHAR").fetchall()[0][0]
    return int(got) == int.from_bytes(hashlib.md5(probe.encode()).digest(), "little")


def partition_of(a: np.ndarray) -> np.ndarray:
    return (a >> np.uint64(58)).astype(np.int64)


def read_plan_state(storage: Storage) -> dict | None:
    if not storage.exists(PLAN_STATE):
        return None
    return json.loads(storage.read_bytes(PLAN_STATE))


def write_plan_state(storage: Storage, state: dict) -> None:
    storage.write_bytes(PLAN_STATE, json.dumps(state, indent=1).encode())


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_shards(storage: Storage, k: int, arrays: dict[str, np.ndarray]) -> None:
    storage.write_bytes(f"{PLAN_DIR}/shards-{k:05d}.npz", _npz(arrays))


def load_shards(storage: Storage, k: int) -> dict[str, np.ndarray]:
    with storage.open(f"{PLAN_DIR}/shards-{k:05d}.npz") as f, np.load(f) as z:
        return {name: z[name] for name in z.files}


def save_ids(storage: Storage, k: int, partitions) -> np.ndarray:
    """Write segment k's ids from an iterable of 64 sorted IDS arrays, one partition in memory at a time;
    returns where each partition starts (65 offsets, in ids), to keep in shards-<k>.npz."""
    bounds = [0]
    with tempfile.TemporaryDirectory(prefix="humanseg-ids-") as tmp:
        path = os.path.join(tmp, "ids.bin")
        with open(path, "wb") as f:
            for ids in partitions:
                np.ascontiguousarray(ids, IDS).tofile(f)
                bounds.append(bounds[-1] + len(ids))
        storage.put_file(f"{PLAN_DIR}/ids-{k:05d}.bin", path)
    return np.asarray(bounds, np.int64)


def load_ids(storage: Storage, k: int, part: int, bounds: np.ndarray) -> np.ndarray:
    """Partition `part` of segment k's ids (sorted), read as a byte range."""
    lo, hi = int(bounds[part]), int(bounds[part + 1])
    if hi == lo:
        return np.empty(0, IDS)
    with storage.open(f"{PLAN_DIR}/ids-{k:05d}.bin") as f:
        f.seek(lo * IDS.itemsize)
        return np.frombuffer(f.read((hi - lo) * IDS.itemsize), IDS)


def has_segment_files(storage: Storage, segments: list[dict]) -> bool:
    names = set(storage.list(PLAN_DIR))
    return all(f"shards-{k:05d}.npz" in names and f"ids-{k:05d}.bin" in names for k in range(len(segments)))


def remove_segment_files(storage: Storage) -> None:
    if storage.exists(PLAN_DIR):
        storage.fs.rm(storage.full(PLAN_DIR), recursive=True)
