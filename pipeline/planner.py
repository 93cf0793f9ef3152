"""Plan a manifest of any length into shards with bounded memory: which rows form which shard.

Rule: the manifest's rows, duplicates (an id seen at an earlier row) dropped, are cut into shards of
`shard_size` in manifest order, within *segments*. Each run that found new rows at the end of the
manifest closes a segment there (OUT/_plan.json keeps the row counts and a sha256 of the ids up to
them), so rows appended later never regroup the shards planned before: a shard is committed or not
by its name alone, and an incremental run only adds shards.

Memory: per shard four integers (first row, last row, items, id digest); duplicates are found by
spilling a 128-bit hash of every id to 64 partition files on local disk and sorting each, then
confirming the candidates exactly by their text in a second pass (only when there are candidates).
The driver never holds the manifest, the items or the ids.

When the manifest changed before the last recorded row (not only appended to), or OUT was written by
a version without _plan.json, shards are planned as before this rule: the items whose id is not in a
committed shard, regrouped in order ("ids" mode). That needs every committed id in memory; such an
output stays in that mode.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .manifest import ManifestReader, batch_items, row_keys
from .plan import Item, Shard, ids_digest, shard_name
from .storage import Storage

PLAN_STATE = "_plan.json"
PARTS = 64
_SPILL = np.dtype([("a", "<u8"), ("b", "<u8"), ("p", "<i8")])
_KEY = np.dtype([("f", "<i8"), ("d", "<u8")])


def _isin(keys: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Which of `keys` are in `among` (structured arrays of _KEY)."""
    if not len(among) or not len(keys):
        return np.zeros(len(keys), bool)
    among = np.sort(among)
    return among[np.minimum(np.searchsorted(among, keys), len(among) - 1)] == keys


def _name_keys(names) -> np.ndarray:
    """(first row, digest) of shard names `shard-<first>-<digest hex>`; other names are skipped."""
    keys = np.empty(len(names), _KEY)
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


def _joined(keys: pa.Array, offsets: np.ndarray) -> tuple[memoryview, np.ndarray]:
    """The keys of each group [offsets[i], offsets[i+1]) joined by newlines: (bytes, byte offsets)."""
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), keys)
    joined = pc.binary_join(lists, "\n")
    bounds = np.frombuffer(joined.buffers()[1], np.int32)[joined.offset: joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    return memoryview(data if data is not None else b""), bounds


class _Grouper:
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
            data, bounds = _joined(keys, np.r_[starts, stops[-1]])
            digests = np.fromiter((ids_digest(data[bounds[i]:bounds[i + 1]]) for i in range(keep)), np.uint64, keep)
            self.out.append((pos[starts], pos[stops - 1], (stops - starts).astype(np.int32), digests))

    def finish(self) -> tuple[np.ndarray, ...]:
        self.add(np.empty(0, np.int64), pa.array([], pa.string()), final=True)
        cols = list(zip(*self.out)) or [[np.empty(0, np.int64)], [np.empty(0, np.int64)],
                                        [np.empty(0, np.int32)], [np.empty(0, np.uint64)]]
        return tuple(np.concatenate(c) for c in cols)


class _DuplicateHashes:
    """128 bits of hash per id, spilled to partition files; after the pass, the rows that share a hash."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="humanseg-plan-")
        self.files = [open(os.path.join(self.dir.name, f"{k:02d}.bin"), "wb") for k in range(PARTS)]
        self.con = duckdb.connect()

    def add(self, pos: np.ndarray, keys: pa.Array) -> None:
        id_table = pa.table({"k": keys})   # noqa: F841 - read by DuckDB's replacement scan
        h = self.con.sql("SELECT hash(k) AS a, hash(k || chr(31)) AS b FROM id_table").fetchnumpy()
        rows = np.empty(len(pos), _SPILL)
        rows["a"], rows["b"], rows["p"] = h["a"], h["b"], pos
        part = (rows["a"] >> np.uint64(58)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        rows, cuts = rows[order], np.searchsorted(part[order], np.arange(PARTS + 1))
        for k in range(PARTS):
            if cuts[k + 1] > cuts[k]:
                rows[cuts[k]:cuts[k + 1]].tofile(self.files[k])

    def candidates(self) -> np.ndarray:
        """Sorted positions of every row whose hash another row shares (a duplicate, or its first)."""
        found = []
        for f in self.files:
            f.close()
            rows = np.fromfile(f.name, _SPILL)
            if len(rows) < 2:
                continue
            rows = rows[np.lexsort((rows["p"], rows["b"], rows["a"]))]
            same = (rows["a"][1:] == rows["a"][:-1]) & (rows["b"][1:] == rows["b"][:-1])
            found.append(rows["p"][np.r_[same, False] | np.r_[False, same]])
        self.dir.cleanup()
        return np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)


@dataclass
class Plan:
    """The shards of a manifest as arrays (one entry per shard), and how to read their items back."""

    reader: ManifestReader
    shard_size: int
    mode: str                          # "segments" (the rule above) or "ids" (id-level, see the docstring)
    first: np.ndarray
    last: np.ndarray
    count: np.ndarray
    digest: np.ndarray
    duplicates: np.ndarray             # sorted positions of rows dropped as duplicates
    duplicate_ids: list[str]           # a few of their ids, for the run's message
    segments: list[dict]               # [{"rows": n, "keys_sha256": ...}]: what OUT/_plan.json records
    done_keys: pa.Array | None = None  # "ids" mode: the committed ids, never planned again
    removed: int = 0                   # "ids" mode: committed ids that are no longer in the manifest
    _names: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def names(self) -> list[str]:
        """Every shard's name (tests and small tools: a run compares integer pairs, see `contains`)."""
        if self._names is None:
            self._names = [shard_name(f, d) for f, d in zip(self.first.tolist(), self.digest.tolist())]
        return self._names

    def _keys(self) -> np.ndarray:
        mine = np.empty(len(self), _KEY)
        mine["f"], mine["d"] = self.first, self.digest
        return mine

    def contains(self, names) -> np.ndarray:
        """Which shards of the plan have one of these names (a boolean per shard). Compared as
        (first row, digest) integer pairs: 1.5 M names as Python strings would cost ~250 MB."""
        return _isin(self._keys(), _name_keys(names))

    def known(self, names) -> set[str]:
        """The names, of those given, that are shards of this plan."""
        names = [n for n in names if len(_name_keys([n]))]
        return {n for n, hit in zip(names, _isin(_name_keys(names), self._keys())) if hit}

    def pending(self, committed) -> np.ndarray:
        """Which shards are not committed (a boolean per shard)."""
        return ~self.contains(committed)

    def _selected(self, pos: np.ndarray, keys: pa.Array) -> np.ndarray:
        keep = ~np.isin(pos, self.duplicates, assume_unique=True)
        if self.done_keys is not None:
            keep &= ~pc.is_in(keys, value_set=self.done_keys).to_numpy(zero_copy_only=False)
        return keep

    def shards(self, pending: np.ndarray, conform: Callable[[pa.Table], pa.Table] = lambda t: t) -> Iterator[Shard]:
        """Read the manifest again and yield the pending shards with their items and extra columns, in
        order; memory: one batch and the shard being filled. ManifestError if the manifest changed."""
        extras = self.reader.extra_names
        index = np.flatnonzero(pending)
        if not len(index):
            return
        k, items, tables = 0, [], []
        for start, batch in self.reader.batches():
            pos = np.arange(start, start + batch.num_rows, dtype=np.int64)
            keys = row_keys(batch, start)
            rows = np.flatnonzero(self._selected(pos, keys))
            shard_of = np.searchsorted(self.first, pos[rows], side="right") - 1   # ascending
            extra = pa.Table.from_batches([batch.select(extras)])
            while k < len(index):
                s = index[k]
                mine = rows[np.searchsorted(shard_of, s):np.searchsorted(shard_of, s, side="right")]
                items += batch_items(batch, start, mine, keys, self.reader.base)
                tables.append(extra.take(pa.array(mine, pa.int64())))
                if start + batch.num_rows <= self.last[s]:
                    break       # the shard goes on in the next batch
                yield self._checked(s, items, tables, conform)
                k, items, tables = k + 1, [], []
            if k == len(index):
                return

    def _checked(self, s: int, items: list[Item], tables: list[pa.Table], conform) -> Shard:
        from .manifest import ManifestError
        name = shard_name(int(self.first[s]), int(self.digest[s]))
        digest = ids_digest("\n".join(i.id for i in items).encode())
        if len(items) != self.count[s] or shard_name(items[0].position, digest) != name:
            raise ManifestError(f"manifest {self.reader.uri} changed while the run was reading it "
                                f"(shard {name}); rerun to plan it again")
        return Shard(name, tuple(items), conform(pa.concat_tables(tables)))


def _validated(segments: list[dict], prefix: dict[int, str]) -> bool:
    return all(prefix.get(s["rows"]) == s["keys_sha256"] for s in segments)


def plan_manifest(reader: ManifestReader, shard_size: int, state: dict | None, committed: set[str],
                  done_ids: Callable[[], set[str]]) -> Plan:
    """Plan `reader`'s manifest for an output whose plan state is `state` (OUT/_plan.json, or None) and whose
    committed shards are `committed`; `done_ids` gives every committed id (only called in "ids" mode)."""
    if shard_size < 1:
        raise ValueError("shard size must be >= 1")
    old = list(state.get("segments", [])) if state and state.get("shard_size") == shard_size else []
    if not committed:
        mode, old = "segments", []             # nothing committed: any grouping is right, start afresh
    elif state and state.get("mode") == "segments" and old:
        mode = "segments"
    else:
        mode = "ids"
    ends = [s["rows"] for s in old]
    dup_hashes, sha, prefix = _DuplicateHashes(), hashlib.sha256(), {}
    grouper = _Grouper(shard_size, ends) if mode == "segments" else None
    for start, batch in reader.batches():
        pos = np.arange(start, start + batch.num_rows, dtype=np.int64)
        keys = row_keys(batch, start)
        dup_hashes.add(pos, keys)
        _hash_keys(sha, prefix, keys, start, ends)
        if grouper is not None:
            grouper.add(pos, keys)
    prefix[reader.rows] = sha.hexdigest()
    candidates = dup_hashes.candidates()
    if mode == "segments" and not _validated(old, prefix):
        mode, old, grouper = "ids", [], None
    segments = old if old and old[-1]["rows"] == reader.rows else old + [{"rows": reader.rows,
                                                                          "keys_sha256": prefix[reader.rows]}]
    plan = Plan(reader, shard_size, mode, *(grouper.finish() if grouper and not len(candidates) else _empty()),
                duplicates=np.empty(0, np.int64), duplicate_ids=[], segments=segments if mode == "segments" else [])
    if mode == "ids":
        done = done_ids()
        plan.done_keys = pa.array(sorted(done), pa.string())
    if len(candidates) or mode == "ids":
        _second_pass(plan, candidates, [s["rows"] for s in old] if mode == "segments" else [])
    if mode == "ids":
        plan.removed = len(plan.done_keys) - plan.removed
    return plan


def _empty() -> tuple[np.ndarray, ...]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.uint64)


def _hash_keys(sha, prefix: dict[int, str], keys: pa.Array, start: int, ends: list[int]) -> None:
    """Feed "key\\n" per row to `sha`, noting its digest at each recorded segment end inside this batch."""
    n, at = len(keys), 0
    for end in [e for e in ends if start < e <= start + n] + [start + n]:
        part = keys.slice(at, end - start - at)
        if len(part):
            data, bounds = _joined(part, np.array([0, len(part)]))
            sha.update(data[bounds[0]:bounds[1]])
            sha.update(b"\n")
        at = end - start
        if end in ends:
            prefix[end] = sha.copy().hexdigest()


def _second_pass(plan: Plan, candidates: np.ndarray, ends: list[int]) -> None:
    """Exact duplicates (text compared, first row wins) among the hash candidates, then the grouping."""
    grouper, first_seen, dups, matched = _Grouper(plan.shard_size, ends), {}, [], 0
    for start, batch in plan.reader.batches():
        pos = np.arange(start, start + batch.num_rows, dtype=np.int64)
        keys = row_keys(batch, start)
        at = np.flatnonzero(np.isin(pos, candidates, assume_unique=True))
        for r, key in zip(at.tolist(), keys.take(pa.array(at, pa.int64())).to_pylist()):
            if key in first_seen:
                dups.append(start + r)
                if len(plan.duplicate_ids) < 20 and key not in plan.duplicate_ids:
                    plan.duplicate_ids.append(key)
            else:
                first_seen[key] = start + r
        plan.duplicates = np.asarray(dups, np.int64)
        keep = plan._selected(pos, keys)
        if plan.done_keys is not None:
            fresh = ~np.isin(pos, plan.duplicates, assume_unique=True)
            matched += int(fresh.sum() - keep.sum())
        grouper.add(pos[keep], keys.filter(pa.array(keep)))
    plan.first, plan.last, plan.count, plan.digest = grouper.finish()
    plan.removed = matched


def read_plan_state(storage: Storage) -> dict | None:
    if not storage.exists(PLAN_STATE):
        return None
    return json.loads(storage.read_bytes(PLAN_STATE))


def write_plan_state(storage: Storage, plan: Plan) -> None:
    """Record the segments (or that this output plans by ids from now on); the lease holder only."""
    state = {"version": 1, "shard_size": plan.shard_size, "mode": plan.mode, "segments": plan.segments}
    storage.write_bytes(PLAN_STATE, json.dumps(state, indent=1).encode())


def read_all(uri: str, endpoint_url: str | None = None) -> tuple[list[Item], pa.Table, Plan]:
    """Every item of a (small) manifest in order, duplicates dropped, with its extra columns: tests, small tools."""
    plan = plan_manifest(ManifestReader(uri, endpoint_url), 1 << 30, None, set(), set)
    shards = list(plan.shards(np.ones(len(plan), bool)))
    return [i for s in shards for i in s.items], pa.concat_tables([s.extras for s in shards]), plan
