"""What earlier runs planned, kept in OUT so an incremental run reads only the rows appended since.

    OUT/_plan.json                 shard size, mode, and per segment: rows, sha256 of the ids up to its
                                   end, and for CSV / JSON Lines manifests the byte length and sha256
                                   of the manifest file at that run
    OUT/_plan/shards-<k>.npz       segment k's shards (first row, last row, items, id digest) and the
                                   rows dropped as duplicates
    OUT/_plan/ids-<k>.npz          the MD5 of every id segment k kept, sorted, in 64 partitions by the
                                   top bits (a later run loads one partition at a time: 25 MB at 100 M ids)

Ids are hashed with DuckDB's md5_number, checked against hashlib's MD5 before any is written or read,
so a DuckDB that changed the function cannot mix two hashes: the run then plans from the whole manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile

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


def save_ids(storage: Storage, k: int, partitions) -> None:
    """Write segment k's ids from an iterable of 64 sorted IDS arrays, one partition in memory at a time."""
    with tempfile.TemporaryDirectory(prefix="humanseg-ids-") as tmp:
        path = os.path.join(tmp, "ids.npz")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for part, ids in enumerate(partitions):
                with z.open(f"p{part:02d}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(ids, IDS))
        storage.put_file(f"{PLAN_DIR}/ids-{k:05d}.npz", path)


def load_ids(storage: Storage, k: int, part: int) -> np.ndarray:
    with storage.open(f"{PLAN_DIR}/ids-{k:05d}.npz") as f, np.load(f) as z:
        return z[f"p{part:02d}"]


def has_segment_files(storage: Storage, segments: list[dict]) -> bool:
    names = set(storage.list(PLAN_DIR))
    return all(f"{kind}-{k:05d}.npz" in names for k in range(len(segments)) for kind in ("shards", "ids"))


def remove_segment_files(storage: Storage) -> None:
    if storage.exists(PLAN_DIR):
        storage.fs.rm(storage.full(PLAN_DIR), recursive=True)
