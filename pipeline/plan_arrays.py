"""The integer machinery of planning (pipeline/planner.py): shard keys, groups of rows, id hashes on disk."""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .plan import ids_digest
from .plan_store import IDS, MD5_SQL, PARTS, SPILL, md5_matches_hashlib, partition_of

KEY = np.dtype([("f", "<i8"), ("d", "<u8")])


def isin_keys(keys: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Which of `keys` are in `among` (structured arrays of KEY)."""
    if not len(among) or not len(keys):
        return np.zeros(len(keys), bool)
    among = np.sort(among)
    return among[np.minimum(np.searchsorted(among, keys), len(among) - 1)] == keys


def name_keys(names) -> np.ndarray:
    """(first row, digest) of shard names `shard-<first>-<digest hex>`; other names are skipped."""
    keys = np.empty(len(names), KEY)
    n = 0
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "shard":
            try:
                keys[n] = (int(parts[1]), int(parts[2], 16))
            except ValueError:
                continue
            n += 1
    return keys[:n]


def joined(keys: pa.Array, offsets: np.ndarray) -> tuple[memoryview, np.ndarray]:
    """The keys of each group [offsets[i], offsets[i+1]) joined by newlines: (bytes, byte offsets)."""
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), keys)
    joined = pc.binary_join(lists, "\n")
    bounds = np.frombuffer(joined.buffers()[1], np.int32)[joined.offset: joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    return memoryview(data if data is not None else b""), bounds


class Grouper:
    """Cuts selected rows (ascending positions) into groups of `size` that never cross a segment end."""

    def __init__(self, size: int, ends: list[int]):
        self.size, self.ends = size, np.asarray(ends, np.int64)
        self.carry_pos = np.empty(0, np.int64)
        self.carry_keys = pa.array([], pa.string())
        self.out: list[tuple[np.ndarray, ...]] = []

    def add(self, pos: np.ndarray, keys: pa.Array, final: bool = False) -> None:
        pos = np.concatenate([self.carry_pos, pos])
        keys = pa.concat_arrays([self.carry_keys, keys]) if len(self.carry_keys) else keys
        if not len(pos):
            return
        seg = np.searchsorted(self.ends, pos, side="right")
        runs = np.r_[0, np.flatnonzero(np.diff(seg)) + 1, len(pos)]
        starts = np.concatenate([np.arange(a, b, self.size) for a, b in zip(runs[:-1], runs[1:])])
        stops = np.r_[starts[1:], len(pos)]
        keep = len(starts) if final or stops[-1] - starts[-1] == self.size else len(starts) - 1
        self.carry_pos, self.carry_keys = pos[starts[keep]:] if keep < len(starts) else pos[:0], \
            keys.slice(starts[keep]) if keep < len(starts) else keys.slice(0, 0)
        if keep:
            starts, stops = starts[:keep], stops[:keep]
            data, bounds = joined(keys, np.r_[starts, stops[-1]])
            digests = np.fromiter((ids_digest(data[bounds[i]:bounds[i + 1]]) for i in range(keep)), np.uint64, keep)
            self.out.append((pos[starts], pos[stops - 1], (stops - starts).astype(np.int32), digests))

    def finish(self) -> tuple[np.ndarray, ...]:
        self.add(np.empty(0, np.int64), pa.array([], pa.string()), final=True)
        return tuple(np.concatenate(c) for c in zip(no_groups(), *self.out))


def no_groups() -> tuple[np.ndarray, ...]:
    """(first rows, last rows, counts, digests) of no group: what Grouper.finish returns, empty."""
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.uint64)


def within(sorted_rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The rows of a sorted array in [start, stop): a batch's share, without scanning the whole array."""
    return sorted_rows[np.searchsorted(sorted_rows, start):np.searchsorted(sorted_rows, stop)]


class Spill:
    """The MD5 of every id with its row, spilled to 64 partition files by the top bits of the hash: the
    rows that share a hash are found one partition at a time, and a segment's ids are kept from here."""

    def __init__(self, from_row: int = 0):
        self.from_row = from_row
        self.dir = tempfile.TemporaryDirectory(prefix="humanseg-plan-")
        self.paths = [os.path.join(self.dir.name, f"{k:02d}.bin") for k in range(PARTS)]
        self.files = [open(p, "wb") for p in self.paths]
        self.con = duckdb.connect()
        self.md5_ok = md5_matches_hashlib(self.con)

    def add(self, pos: np.ndarray, keys: pa.Array) -> None:
        id_table = pa.table({"k": keys})   # noqa: F841 - read by DuckDB's replacement scan
        h = self.con.sql(f"{MD5_SQL} FROM id_table").fetchnumpy()
        rows = np.empty(len(pos), SPILL)
        rows["a"], rows["b"], rows["p"] = h["a"], h["b"], pos
        part = partition_of(rows["a"])
        order = np.argsort(part, kind="stable")
        rows, cuts = rows[order], np.searchsorted(part[order], np.arange(PARTS + 1))
        for k in range(PARTS):
            if cuts[k + 1] > cuts[k]:
                rows[cuts[k]:cuts[k + 1]].tofile(self.files[k])

    def partition(self, k: int) -> np.ndarray:
        for f in self.files:
            f.flush()
        return np.fromfile(self.paths[k], SPILL)

    def candidates(self) -> np.ndarray:
        """Sorted rows whose hash another row shares (a duplicate, or its first)."""
        found = []
        for k in range(PARTS):
            rows = self.partition(k)
            if len(rows) < 2:
                continue
            rows = rows[np.lexsort((rows["p"], rows["b"], rows["a"]))]
            same = (rows["a"][1:] == rows["a"][:-1]) & (rows["b"][1:] == rows["b"][:-1])
            found.append(rows["p"][np.r_[same, False] | np.r_[False, same]])
        return np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)

    def ids(self, lo: int, hi: int, dropped: np.ndarray) -> Iterator[np.ndarray]:
        """Per partition, the sorted hashes of the ids of rows lo..hi-1 that were kept."""
        for k in range(PARTS):
            rows = self.partition(k)
            rows = rows[(rows["p"] >= lo) & (rows["p"] < hi)]
            rows = rows[~np.isin(rows["p"], dropped)]
            ids = np.empty(len(rows), IDS)
            ids["a"], ids["b"] = rows["a"], rows["b"]
            yield np.sort(ids)

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.dir.cleanup()


class SegmentHashes:
    """sha256 of "id\\n" per row, restarted at each recorded segment end: a segment's ids are checked alone."""

    def __init__(self, ends: list[int]):
        self.ends, self.sha, self.found = ends, hashlib.sha256(), {}

    def add(self, keys: pa.Array, start: int) -> None:
        n, at = len(keys), 0
        for end in sorted({e for e in self.ends if start < e <= start + n} | {start + n}):
            part = keys.slice(at, end - start - at)
            if len(part):
                data, bounds = joined(part, np.array([0, len(part)]))
                self.sha.update(data[bounds[0]:bounds[1]])
                self.sha.update(b"\n")
            at = end - start
            if end in self.ends:
                self.found[end], self.sha = self.sha.hexdigest(), hashlib.sha256()

    def finish(self, rows: int) -> dict[int, str]:
        self.found.setdefault(rows, self.sha.hexdigest())
        return self.found
