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

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from .manifest import ManifestReader, batch_items, row_keys
from .plan import Item, Shard, ids_digest, shard_name
from .plan_arrays import KEY, Grouper, SegmentHashes, Spill, isin_keys, name_keys, no_groups, within
from .plan_store import (IDS, PARTS, PLAN_STATE, has_segment_files, load_ids, load_shards, read_plan_state,  # noqa: F401
                         remove_segment_files, save_ids, save_shards, write_plan_state as write_state)
from .storage import Storage

STATE_VERSION = 2


def _keyed(batches) -> Iterator[tuple[int, pa.RecordBatch, np.ndarray, pa.Array]]:
    """(first row, batch, its rows' positions, their ids) for each batch read."""
    for start, batch in batches:
        yield start, batch, np.arange(start, start + batch.num_rows, dtype=np.int64), row_keys(batch, start)


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
    done_keys: set[str] | None = None  # "ids" mode: the committed ids, never planned again
    removed: int = 0                   # "ids" mode: committed ids that are no longer in the manifest
    tail: tuple | None = None          # (byte, row, sha) where appended rows begin, when only they were read
    spill: Spill | None = field(default=None, repr=False)    # every id's hash, until the state is written
    _names: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def names(self) -> list[str]:
        """Every shard's name (tests and small tools: a run compares integer pairs, see `contains`)."""
        if self._names is None:
            self._names = [shard_name(f, d) for f, d in zip(self.first.tolist(), self.digest.tolist())]
        return self._names

    def extend(self, groups: tuple[np.ndarray, ...]) -> None:
        """Add shards (Grouper.finish's arrays) after the plan's own."""
        self.first, self.last, self.count, self.digest = (
            np.concatenate([a, b]) for a, b in zip((self.first, self.last, self.count, self.digest), groups))

    def tail_args(self) -> tuple:
        """batches() arguments that read the appended rows only."""
        return self.tail[0], self.tail[1], self.tail[2].copy()

    def _keys(self) -> np.ndarray:
        mine = np.empty(len(self), KEY)
        mine["f"], mine["d"] = self.first, self.digest
        return mine

    def contains(self, names) -> np.ndarray:
        """Which shards of the plan have one of these names (a boolean per shard). Compared as
        (first row, digest) integer pairs: 1.5 M names as Python strings would cost ~250 MB."""
        return isin_keys(self._keys(), name_keys(names))

    def known(self, names) -> set[str]:
        """The names, of those given, that are shards of this plan."""
        names = [n for n in names if len(name_keys([n]))]
        return {n for n, hit in zip(names, isin_keys(name_keys(names), self._keys())) if hit}

    def pending(self, committed) -> np.ndarray:
        """Which shards are not committed (a boolean per shard)."""
        return ~self.contains(committed)

    def _selected(self, pos: np.ndarray, keys: pa.Array, duplicates: np.ndarray | None = None) -> np.ndarray:
        """Which rows of a batch are items: not duplicates (`duplicates`: of this batch; default the plan's),
        not committed ("ids" mode)."""
        if duplicates is None:
            duplicates = within(self.duplicates, int(pos[0]), int(pos[-1]) + 1) if len(pos) else self.duplicates
        keep = ~np.isin(pos, duplicates, assume_unique=True)
        if self.done_keys is not None:    # a Python set: pc.is_in rebuilt its hash table for every batch
            keep &= np.fromiter((k not in self.done_keys for k in keys.to_pylist()), bool, len(keys))
        return keep

    def shards(self, pending: np.ndarray, conform: Callable[[pa.Table], pa.Table] = lambda t: t) -> Iterator[Shard]:
        """Read the manifest again and yield the pending shards with their items and extra columns, in
        order; memory: one batch and the shard being filled. ManifestError if the manifest changed."""
        extras = self.reader.extra_names
        index = np.flatnonzero(pending)
        if not len(index):
            return
        k, items, tables = 0, [], []
        # only the appended rows when every pending shard is among them
        tail_only = self.tail is not None and self.first[index[0]] >= self.tail[1]
        for start, batch, pos, keys in _keyed(self.reader.batches(*(self.tail_args() if tail_only else ()))):
            rows = np.flatnonzero(self._selected(pos, keys))
            shard_of = np.searchsorted(self.first, pos[rows], side="right") - 1   # ascending
            wanted = (shard_of >= 0) & pending[np.maximum(shard_of, 0)]
            rows, shard_of = rows[wanted], shard_of[wanted]
            # once per batch: the items and extra columns of its rows in pending shards, sliced per shard
            batch_rows = batch_items(batch, start, rows, keys, self.reader.base)
            extra = pa.Table.from_batches([batch.select(extras)]).take(pa.array(rows, pa.int64()))
            while k < len(index):
                s = index[k]
                lo, hi = np.searchsorted(shard_of, s), np.searchsorted(shard_of, s, side="right")
                items += batch_rows[lo:hi]
                tables.append(extra.slice(lo, hi - lo))
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


def _mode(state: dict | None, shard_size: int, committed) -> tuple[str, list[dict]]:
    """("segments", the recorded segments) or ("ids", []) for an output in this state."""
    if not committed:
        return "segments", []             # nothing committed: any grouping is right, start afresh
    if state and state.get("version") == STATE_VERSION and state.get("mode") == "segments" \
            and state.get("shard_size") == shard_size and state.get("segments"):
        return "segments", list(state["segments"])
    return "ids", []


def plan_manifest(reader: ManifestReader, shard_size: int, state: dict | None, committed: set[str],
                  done_ids: Callable[[], set[str]], storage: Storage | None = None) -> Plan:
    """Plan `reader`'s manifest for an output whose plan state is `state` (OUT/_plan.json, or None) and whose
    committed shards are `committed`; `done_ids` gives every committed id (only called in "ids" mode).
    With `storage` (OUT), rows appended since the last run are all that is read when the rest is proven
    unchanged (pipeline/plan_store.py)."""
    if shard_size < 1:
        raise ValueError("shard size must be >= 1")
    mode, old = _mode(state, shard_size, committed)
    if mode == "segments" and old and storage is not None:
        plan = _plan_tail(reader, shard_size, old, storage)
        if plan is not None:
            return plan
    return _plan_full(reader, shard_size, mode, old, done_ids)


def _plan_full(reader: ManifestReader, shard_size: int, mode: str, old: list[dict], done_ids) -> Plan:
    ends = [s["rows"] for s in old]
    spill, hashes = Spill(), SegmentHashes(ends)
    grouper = Grouper(shard_size, ends) if mode == "segments" else None
    _first_pass(reader.batches(), spill, hashes, grouper)
    candidates = spill.candidates()
    found = hashes.finish(reader.rows)
    if mode == "segments" and any(found.get(s["rows"]) != s["keys_sha256"] for s in old):
        mode, old, grouper = "ids", [], None
    plan = Plan(reader, shard_size, mode, *(grouper.finish() if grouper and not len(candidates) else no_groups()),
                duplicates=np.empty(0, np.int64), duplicate_ids=[], segments=[])
    if mode == "segments":
        plan.segments = old if old and old[-1]["rows"] == reader.rows else \
            old + [_segment(reader, found[reader.rows], reader.fingerprint)]
        plan.spill = spill
    else:
        spill.close()
        plan.done_keys = set(done_ids())
    if len(candidates) or mode == "ids":
        _exact_pass(plan, reader.batches(), candidates, ends if mode == "segments" else [])
    if mode == "ids":
        plan.removed = len(plan.done_keys) - plan.removed
    return plan


def _segment(reader: ManifestReader, keys_sha256: str, fingerprint: str) -> dict:
    """A segment ending at the manifest's last row: its ids' hash, and the bytes that prove it unchanged."""
    seg = {"rows": reader.rows, "keys_sha256": keys_sha256}
    if reader.kind != "parquet":
        seg.update(bytes=reader.size(), bytes_sha256=fingerprint)
    return seg


def _first_pass(batches, spill: Spill, hashes: SegmentHashes, grouper: Grouper | None) -> None:
    """Every id hashed (spill: duplicates; hashes: each segment's ids), grouped as if none were a duplicate."""
    for start, _, pos, keys in _keyed(batches):
        spill.add(pos, keys)
        hashes.add(keys, start)
        if grouper is not None:
            grouper.add(pos, keys)


def _exact_pass(plan: Plan, batches, candidates: np.ndarray, ends: list[int], known: np.ndarray | None = None) -> None:
    """Exact duplicates (text compared, first row wins) among the hash candidates, plus `known` ones (rows
    whose id an earlier segment kept), then the grouping of the rows read by `batches`."""
    grouper, first_seen, found, matched = Grouper(plan.shard_size, ends), {}, [], 0
    known = np.empty(0, np.int64) if known is None else known
    for start, batch, pos, keys in _keyed(batches):
        stop, dups = start + batch.num_rows, []
        at = within(candidates, start, stop) - start
        for r, key in zip(at.tolist(), keys.take(pa.array(at, pa.int64())).to_pylist()):
            if key in first_seen:
                dups.append(start + r)
                if len(plan.duplicate_ids) < 20 and key not in plan.duplicate_ids:
                    plan.duplicate_ids.append(key)
            else:
                first_seen[key] = start + r
        hit = within(known, start, stop) - start
        plan.duplicate_ids += keys.take(pa.array(hit[: max(0, 20 - len(plan.duplicate_ids))], pa.int64())).to_pylist()
        dups = np.union1d(np.asarray(dups, np.int64), start + hit)
        here = np.union1d(within(plan.duplicates, start, stop), dups)
        keep = plan._selected(pos, keys, here)
        if plan.done_keys is not None:
            matched += int(len(pos) - len(here) - keep.sum())
        grouper.add(pos[keep], keys.filter(pa.array(keep)))
        found.append(dups)
    plan.duplicates = np.union1d(plan.duplicates, np.concatenate([np.empty(0, np.int64), *found]))
    plan.extend(grouper.finish())
    plan.removed = matched


def _plan_tail(reader: ManifestReader, shard_size: int, old: list[dict], storage: Storage) -> Plan | None:
    """The plan from the recorded segments and the rows appended since, reading only those; None when
    the bytes before them are not the recorded ones (or the format cannot be read from the middle)."""
    last = old[-1]
    if "bytes" not in last or reader.kind == "parquet" or not has_segment_files(storage, old):
        return None
    size = reader.size()
    if size < last["bytes"]:
        return None
    sha, final = reader.prefix_sha256(last["bytes"])
    if sha.hexdigest() != last["bytes_sha256"] or final != b"\n":
        return None
    recorded = [load_shards(storage, k) for k in range(len(old))]
    plan = Plan(reader, shard_size, "segments", *(np.concatenate([r[n] for r in recorded])
                                                  for n in ("first", "last", "count", "digest")),
                duplicates=np.concatenate([r["duplicates"] for r in recorded]), duplicate_ids=[], segments=old)
    if size == last["bytes"]:
        reader.rows, reader.fingerprint = last["rows"], last["bytes_sha256"]
        return plan
    plan.tail = (last["bytes"], last["rows"], sha)
    spill, hashes, grouper = Spill(last["rows"]), SegmentHashes([]), Grouper(shard_size, [])
    if not spill.md5_ok:
        spill.close()
        return None
    _first_pass(reader.batches(*plan.tail_args()), spill, hashes, grouper)
    plan.segments = old + [_segment(reader, hashes.finish(reader.rows)[reader.rows], reader.fingerprint)]
    plan.spill = spill
    candidates, known = spill.candidates(), _seen_before(spill, storage, [r["id_bounds"] for r in recorded])
    if len(candidates) or len(known):
        _exact_pass(plan, reader.batches(*plan.tail_args()), candidates, [], known)
    else:
        plan.extend(grouper.finish())
    return plan


def _seen_before(spill: Spill, storage: Storage, bounds: list[np.ndarray]) -> np.ndarray:
    """Rows of the tail whose id's MD5 is among the ids kept by earlier segments, one partition at a time."""
    found = []
    for k in range(PARTS):
        rows = spill.partition(k)
        if not len(rows):
            continue
        keys = np.empty(len(rows), IDS)
        keys["a"], keys["b"] = rows["a"], rows["b"]
        for seg in range(len(bounds)):
            found.append(rows["p"][isin_keys(keys, load_ids(storage, seg, k, bounds[seg]))])
    return np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)


def write_plan_state(storage: Storage, plan: Plan) -> None:
    """Record the segments, and each new segment's shards and ids (or that this output plans by ids from
    now on); the lease holder only. The state is written last: it names only segments whose files exist."""
    # what this plan read is (re)written: a fresh plan may follow an --overwrite. A Parquet manifest is
    # always read whole (no appending to it), so it keeps no ids
    if plan.mode == "segments" and plan.spill is not None and plan.spill.md5_ok and plan.reader.kind != "parquet":
        start = 0
        for k, seg in enumerate(plan.segments):
            if start >= plan.spill.from_row:
                mine = (plan.first >= start) & (plan.first < seg["rows"])
                dups = plan.duplicates[(plan.duplicates >= start) & (plan.duplicates < seg["rows"])]
                bounds = save_ids(storage, k, plan.spill.ids(start, seg["rows"], dups))
                save_shards(storage, k, {"first": plan.first[mine], "last": plan.last[mine], "count": plan.count[mine],
                                         "digest": plan.digest[mine], "duplicates": dups, "id_bounds": bounds})
            start = seg["rows"]
    if plan.mode == "ids":
        remove_segment_files(storage)
    write_state(storage, {"version": STATE_VERSION, "shard_size": plan.shard_size, "mode": plan.mode,
                          "segments": plan.segments})
    if plan.spill is not None:
        plan.spill.close()
        plan.spill = None


def wipe_plan(storage: Storage) -> None:
    """--overwrite: forget what earlier runs planned."""
    remove_segment_files(storage)
    storage.remove(PLAN_STATE)


def read_all(uri: str, endpoint_url: str | None = None) -> tuple[list[Item], pa.Table, Plan]:
    """Every item of a (small) manifest in order, duplicates dropped, with its extra columns: tests, small tools."""
    plan = plan_manifest(ManifestReader(uri, endpoint_url), 1 << 30, None, set(), set)
    shards = list(plan.shards(np.ones(len(plan), bool)))
    return [i for s in shards for i in s.items], pa.concat_tables([s.extras for s in shards]), plan
