"""A shard's life in OUT, from plan to commit. The only code that names or reads shard markers.

    OUT/_run.json                    the run record: settings that change results, checked on resume
    OUT/_shards/<shard>.done.json    a committed shard, written after its masks and Parquet (stats, ids, the
                                     Parquet file's name, rows, bytes, sha256: a commit can be verified)
    OUT/_shards/<shard>.failed.json  why a shard failed (removed when it commits)
    OUT/_compacted/<part>.parquet    many committed shards merged into OUT/metadata/<part>.parquet by
                                     `compact` (pipeline/parts.py): those shards are committed by this
                                     record, whatever marker or shard file of theirs is still around

A Parquet file that neither a done marker nor a part record commits is a leftover of an interrupted
run or compaction, removed before new work starts by the holder of OUT's lease (pipeline/lease.py:
never a file another writer is committing); a committed shard whose Parquet file (or part) is missing
or differs from its marker (or record) is "damaged". Either is redone whole. Taking back a shard that
is in a part rewrites the part without it. Executors feed a `ShardAssembly` each unit's rows; it
commits when the last is in.
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .faults import pause_point
from .parts import COMPACTED_DIR, PartRecord, part_path, read_records, record_names, record_path, rewrite_without
from .plan import Shard
from .storage import OutputStorageError, Storage
from .write import MASKS_DIR, METADATA_DIR, parquet_bytes, rows_table, shard_parquet_path, with_extras

RUN_RECORD = "_run.json"
SHARDS_DIR = "_shards"
DONE, FAILED = "done", "failed"
MARKER_SLICE = 2000


class RunMismatchError(ValueError):
    """OUT holds a run made with settings that would give different results."""


def _marker_path(shard: str, kind: str = DONE) -> str:
    return f"{SHARDS_DIR}/{shard}.{kind}.json"


def _parse_marker_name(name: str) -> tuple[str, str] | None:
    """(shard, kind) of a file name under _shards/, or None for anything else."""
    for kind in (DONE, FAILED):
        suffix = f".{kind}.json"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return None


def read_run_record(storage: Storage) -> dict | None:
    if not storage.exists(RUN_RECORD):
        return None
    return json.loads(storage.read_bytes(RUN_RECORD))


def check_run_record(storage: Storage, record: dict, compat_keys: list[str], absent: dict | None = None) -> dict | None:
    """The existing run record, after checking it has the same result-changing settings as `record`."""
    old = read_run_record(storage)
    if old is not None:
        was = {k: old.get("config", {}).get(k, (absent or {}).get(k)) for k in compat_keys}
        diffs = [f"{k}: {was[k]!r} -> {record['config'].get(k)!r}"
                 for k in compat_keys if was[k] != record["config"].get(k)]
        if diffs:
            raise RunMismatchError(
                f"{storage.root} already holds a run with different settings ({'; '.join(diffs)}). "
                "Use another --output, or pass --overwrite to delete its results and start over.")
    return old


def check_or_write_run_record(storage: Storage, record: dict, compat_keys: list[str],
                              absent: dict | None = None) -> dict | None:
    """Write the run record, or check that an existing one has the same result-changing settings
    (`absent`: the value a setting had in records written before it existed)."""
    old = check_run_record(storage, record, compat_keys, absent)
    if old is not None:
        record = dict(record, created=old.get("created", record.get("created")), runs=old.get("runs", 0) + 1)
    storage.write_bytes(RUN_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
    return old


def wipe_output(storage: Storage) -> None:
    """--overwrite: delete this tool's files under OUT (nothing else)."""
    for rel in (MASKS_DIR, METADATA_DIR, SHARDS_DIR, COMPACTED_DIR):
        if storage.exists(rel):
            storage.fs.rm(storage.full(rel), recursive=True)
    storage.remove(RUN_RECORD)


def _commit_problem(storage: Storage, rel: str, want: dict, sizes: dict[str, int], footers: bool) -> str | None:
    """Why a committed Parquet file (a shard's or a part's) is not the one recorded (`want`: bytes, rows), or None."""
    size = sizes.get(_base(rel))
    if size is None:
        return f"{rel} is missing"
    if "bytes" in want and size != want["bytes"]:   # markers older than verified commits have no size
        return f"{rel} has {size} bytes, {want['bytes']} were committed"
    if not footers and "bytes" in want:
        return None
    try:
        with storage.open(rel) as f:
            rows = pq.read_metadata(f).num_rows
    except OutputStorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable footer means the same: redo the shard
        return f"{rel} is unreadable ({type(exc).__name__})"
    if rows != want.get("rows", rows):
        return f"{rel} has {rows} rows, {want['rows']} were committed"
    return None


def _base(rel: str) -> str:
    """A file's name, as listings give it."""
    return rel.rsplit("/", 1)[-1]


def _wanted(marker: dict) -> dict:
    """What a shard's marker says its Parquet file holds."""
    return dict(marker.get("parquet", {}), **({"rows": marker["rows"]} if "rows" in marker else {}))


class Ledger:
    """What OUT holds shard by shard (committed, failed), and every change to it."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.committed_now: list[dict] = []     # markers written by this process (the run summary)
        self.failed_now: dict[str, str] = {}    # shard -> reason, by this process
        self.broken: str | None = None          # why the output storage as a whole failed, if it did

    def _listed(self, kind: str = DONE) -> set[str]:
        """Shards with a marker of this kind, from the listing of _shards/ only."""
        parsed = (_parse_marker_name(n) for n in self.storage.list(SHARDS_DIR))
        return {p[0] for p in parsed if p and p[1] == kind}

    @cached_property
    def parts(self) -> dict[str, PartRecord]:
        """Live part records without their ids (pipeline/parts.py), part -> record."""
        return read_records(self.storage)

    @cached_property
    def compacted(self) -> dict[str, str]:
        """Committed shard in a part -> the part."""
        return {s: name for name, r in self.parts.items() for s in r.table.column("shard").to_pylist()}

    @cached_property
    def _own_markers(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """Markers of the committed shards in no part, and failure records of uncommitted shards."""
        names = [n for n in self.storage.list(SHARDS_DIR)
                 if (p := _parse_marker_name(n)) and not (p[1] == DONE and p[0] in self.compacted)]
        done: dict[str, dict] = {}
        failed: dict[str, dict] = {}
        # in slices, keeping a count of each marker's ids, not the ids: 100,000 markers read whole took
        # 1.5 GB for `status` (64 ids a shard); the ids are read again only to plan by ids (`done`)
        for start in range(0, len(names), MARKER_SLICE):
            piece = [f"{SHARDS_DIR}/{n}" for n in names[start:start + MARKER_SLICE]]
            for rel, blob in self.storage.read_many(piece).items():
                shard, kind = _parse_marker_name(_base(rel))
                marker = json.loads(blob)
                if kind == DONE:
                    marker["items"] = len(marker.pop("ids", ()))
                (done if kind == DONE else failed)[shard] = marker
        return done, {s: f for s, f in failed.items() if s not in done and s not in self.compacted}

    @cached_property
    def _markers(self) -> dict[str, dict]:
        done = {s: m for r in read_records(self.storage, None).values() for s, m in r.markers().items()}
        done.update(self.markers_of(sorted(self._own_markers[0])))
        return done

    @property
    def done(self) -> dict[str, dict]:
        """Committed shard -> its marker (stats + ids), from part records for compacted shards."""
        return self._markers

    @property
    def failed(self) -> dict[str, dict]:
        """Failed shard -> its failure record (never a committed one)."""
        return self._own_markers[1]

    def committed_names(self) -> set[str]:
        """Names of the committed shards, from listings and part records only (no marker is read)."""
        if "_markers" in self.__dict__:
            return set(self.done)
        return self._listed(DONE) | set(self.compacted)

    def failed_names(self) -> set[str]:
        """Names of the shards with a failure record and no commit, from listings only."""
        return self._listed(FAILED) - self.committed_names()

    @property
    def done_ids(self) -> set[str]:
        return {i for marker in self.done.values() for i in marker.get("ids", ())}

    def stale_failures(self, planned: set[str]) -> list[str]:
        """Failure records of shards that are not in the plan any more (items left the manifest, or
        regrouped): a shard's name holds a digest of its ids, so a changed shard has another name."""
        return sorted(n for n in self.failed if n not in planned)

    def clear_stale_failures(self, planned: set[str]) -> list[str]:
        stale = self.stale_failures(planned)
        for shard in stale:
            self.storage.remove(_marker_path(shard, FAILED))
            del self.failed[shard]
        return stale

    def damaged(self, footers: bool = True) -> dict[str, str]:
        """Committed shards whose Parquet file (or part) is missing or not the one committed -> why (sizes;
        `footers`: rows too). A damaged part damages all its shards."""
        sizes = self.storage.sizes(METADATA_DIR)
        own, parts = self._own_markers[0], list(self.parts.values())
        with ThreadPoolExecutor(8) as pool:
            mine = pool.map(lambda s: _commit_problem(self.storage, shard_parquet_path(s), _wanted(own[s]), sizes,
                                                      footers), list(own))
            theirs = pool.map(lambda r: _commit_problem(self.storage, part_path(r.name), r.info, sizes, footers), parts)
            problems = dict(zip(own, mine))
            for record, why in zip(parts, theirs):
                if why:
                    problems.update(dict.fromkeys(record.table.column("shard").to_pylist(), why))
        return {s: p for s, p in sorted(problems.items()) if p}

    def uncommit(self, shards: list[str]) -> None:
        """Take committed shards back to redo them whole (marker first: a crash in between leaves them
        unfinished). Shards in a part: the part is rewritten without them (pipeline/parts.py)."""
        # for a shard in a part, a marker and file are leftovers of an interrupted compaction: once the part
        # no longer holds it they would commit it again
        self.storage.remove_many([_marker_path(s) for s in shards])
        self.storage.remove_many([shard_parquet_path(s) for s in shards])
        in_parts: dict[str, set[str]] = {}
        for shard in shards:
            if shard in self.compacted:
                in_parts.setdefault(self.compacted[shard], set()).add(shard)
        for part, gone in in_parts.items():
            rewrite_without(self.storage, part, gone, self.parts[part].info)
        for cached in ("parts", "compacted"):
            self.__dict__.pop(cached, None)
        for shard in shards:
            self._cache(shard, None)

    def remove_temp_files(self) -> list[str]:
        """Temp files of writes that were killed, anywhere in OUT (local only: S3 writes are one PUT)."""
        return self.storage.remove_temp_files(MASKS_DIR, recursive=True) + \
            [n for rel in ("", SHARDS_DIR, METADATA_DIR, COMPACTED_DIR) for n in self.storage.remove_temp_files(rel)]

    def remove_leftovers(self) -> list[str]:
        """Delete Parquet files that nothing commits (of shards without a marker, parts without a live record,
        shard files merged into a part), and what an interrupted compaction left: void part records, markers
        of shards in a part. Returns the names of the Parquet files removed."""
        live = self.parts
        for name in record_names(self.storage):
            if name not in live:
                self.storage.remove(record_path(name))
        listed = self._listed(DONE)
        keep = {_base(part_path(p)) for p in live} | \
            {_base(shard_parquet_path(s)) for s in listed - set(self.compacted)}
        removed = [n for n in self.storage.list(METADATA_DIR) if n.endswith(".parquet") and n not in keep]
        self.storage.remove_many([f"{METADATA_DIR}/{n}" for n in removed])
        self.storage.remove_many([_marker_path(s) for s in sorted(listed & set(self.compacted))])
        return removed

    def committed_files(self) -> tuple[list[str], list[str]]:
        """Parquet files (relative paths) holding the committed shards (parts, then shard files), and the
        committed shards whose file is missing. From listings and part records only, so a Parquet file
        left by an interrupted run or compaction is never among them, nor a shard read twice."""
        files, missing = self._committed_files()
        if missing:     # a compaction may have merged them since the records were read: read them again
            for cached in ("parts", "compacted"):
                self.__dict__.pop(cached, None)
            files, missing = self._committed_files()
        return files, missing

    def _committed_files(self) -> tuple[list[str], list[str]]:
        shards = self.unmerged_shards()
        present = set(self.storage.list(METADATA_DIR))
        files, missing = [], []
        for name, record in sorted(self.parts.items()):
            if _base(part_path(name)) in present:
                files.append(part_path(name))
            else:
                missing += record.table.column("shard").to_pylist()
        for shard in shards:
            if _base(shard_parquet_path(shard)) in present:
                files.append(shard_parquet_path(shard))
            else:
                missing.append(shard)
        return files, missing

    def unmerged_shards(self) -> list[str]:
        """Committed shards in no part (from the listing): what `compact` merges."""
        return sorted(self._listed(DONE) - set(self.compacted))

    def markers_of(self, shards: list[str]) -> dict[str, dict]:
        """The markers of these shards (those that have one), read now."""
        blobs = self.storage.read_many([_marker_path(s) for s in shards])
        return {_parse_marker_name(_base(rel))[0]: json.loads(b) for rel, b in blobs.items()}

    def remove_merged(self, shards: list[str]) -> None:
        """Delete the markers, then the files, of shards that a part's record now commits (leftovers)."""
        self.storage.remove_many([_marker_path(s) for s in shards])
        pause_point("compact-clean")
        self.storage.remove_many([shard_parquet_path(s) for s in shards])

    def files_of(self, shards: list[str]) -> list[str]:
        """The Parquet files that hold these committed shards' rows."""
        return sorted({part_path(self.compacted[s]) if s in self.compacted else shard_parquet_path(s) for s in shards})

    def counts(self, exclude: set[str] = frozenset()) -> dict[str, int]:
        """Committed shards, rows ok/error, items and video frames, from the part records' columns and the
        other shards' markers (`exclude`: shards not to count, e.g. damaged ones)."""
        own = [m for s, m in self._own_markers[0].items() if s not in exclude]
        totals = {"shards": len(own), "rows_ok": sum(m.get("rows_ok", 0) for m in own),
                  "rows_error": sum(m.get("rows_error", 0) for m in own),
                  "items": sum(m.get("items", len(m.get("ids", ()))) for m in own),
                  # markers written before `video_frames` existed only have `frames` (images too)
                  "video_frames": sum(m.get("video_frames", m.get("frames", 0)) for m in own)}
        for record in self.parts.values():
            dropped = pc.is_in(record.table["shard"], pa.array(sorted(exclude), pa.string()))
            table = record.table.filter(pc.invert(dropped))
            totals["shards"] += table.num_rows
            for key in ("rows_ok", "rows_error", "items", "video_frames"):
                totals[key] += pc.sum(table[key]).as_py() or 0
        return totals

    def shards_with_errors(self) -> list[str]:
        own = [s for s, m in self._own_markers[0].items() if m.get("rows_error")]
        return own + [s for r in self.parts.values()
                      for s in r.table.filter(pc.greater(r.table["rows_error"], 0))["shard"].to_pylist()]

    def commit(self, shard: Shard, rows: list[dict], stats: dict) -> dict:
        """Write the shard's Parquet, then its marker (last). Masks must already be written."""
        ok = sum(r["status"] == "ok" for r in rows)
        video_frames = sum(r["frame_index"] is not None for r in rows)
        table = rows_table(rows)
        if shard.extras is not None:    # the manifest's other columns, joined by manifest row
            at = {item.position: k for k, item in enumerate(shard.items)}
            rows_at = pa.array([at[p] for p in table.column("manifest_row").to_pylist()], pa.int64())
            table = with_extras(table, shard.extras.take(rows_at))
        data = parquet_bytes(table)
        self.storage.write_bytes(shard_parquet_path(shard.name), data)
        pause_point("commit")
        parquet = {"file": shard_parquet_path(shard.name), "rows": table.num_rows, "bytes": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()}
        marker = dict(stats, rows_ok=ok, rows_error=len(rows) - ok, video_frames=video_frames, shard=shard.name,
                      rows=table.num_rows, ids=[i.id for i in shard.items], committed_at=time.time(), parquet=parquet)
        self.storage.write_bytes(_marker_path(shard.name), json.dumps(marker).encode())
        self.storage.remove(_marker_path(shard.name, FAILED))
        self._cache(shard.name, marker)
        self.committed_now.append(marker)
        return marker

    def fail(self, shard: Shard, reason: str) -> None:
        """Record a shard's failure; never raises for the storage (a record not written is only said)."""
        record = {"shard": shard.name, "reason": reason, "ids": [i.id for i in shard.items], "failed_at": time.time()}
        self.failed_now[shard.name] = reason
        if self.broken:     # not another minute of retries against storage known to be gone
            self.failed_now[shard.name] = f"{reason} (not recorded: {self.broken})"
            return
        try:
            self.storage.write_bytes(_marker_path(shard.name, FAILED), json.dumps(record).encode())
        except Exception as exc:  # noqa: BLE001 - the storage that failed the shard may fail this too
            self.note_storage_error(exc)
            self.failed_now[shard.name] = f"{reason} (its failure record could not be written: {exc})"
            return
        if "_own_markers" in self.__dict__:
            self.failed[shard.name] = record

    def _cache(self, shard: str, marker: dict | None) -> None:
        """Keep loaded markers up to date (a committed or, with None, uncommitted shard); what is not loaded
        yet is read from OUT when asked: a first commit must not read every marker of OUT."""
        if "_markers" in self.__dict__:
            self._markers.pop(shard, None)
            if marker is not None:
                self._markers[shard] = marker
        if "_own_markers" in self.__dict__:     # kept with a count of the ids, as read
            own, failed = self._own_markers
            own.pop(shard, None)
            failed.pop(shard, None)
            if marker is not None:
                own[shard] = dict({k: v for k, v in marker.items() if k != "ids"}, items=len(marker.get("ids", ())))

    def note_storage_error(self, exc: BaseException) -> None:
        """Remember a failure of the output storage as a whole: executors stop starting work."""
        if isinstance(exc, OutputStorageError) and self.broken is None:
            self.broken = str(exc)

    def uncommit_errors(self) -> list[str]:
        """Take back the committed shards that have error rows (`retry --errors`); return their names."""
        shards = self.shards_with_errors()
        self.uncommit(shards)
        return shards


@dataclass
class ShardAssembly:
    """One shard's rows and stats as its units land; it commits through the ledger once the last is in."""

    shard: Shard
    ledger: Ledger
    on_unit: Callable[[int], None] = lambda frames: None   # called with each landed unit's frame count
    rows: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    units_left: int = -1            # -1: not expanded yet
    failed: bool = False

    def expanded(self, units: list, rows: list[dict]) -> None:
        """The shard's work units are known; `rows` are the items that failed while planning them."""
        if self.failed:
            return
        self.rows.extend(rows)
        self.units_left = len(units)
        self.stats["units"] = len(units)
        self._commit_if_complete()

    def landed(self, rows: list[dict], stats: dict) -> None:
        """One unit's rows (masks already written) and timings."""
        if self.failed:
            return
        self.on_unit(stats["frames"])
        self.rows.extend(rows)
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0) + v
        self.units_left -= 1
        self._commit_if_complete()

    def fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            self.rows = []
            self.ledger.fail(self.shard, reason)

    def _commit_if_complete(self) -> None:
        if self.units_left != 0 or self.failed:
            return
        try:
            self.ledger.commit(self.shard, self.rows, self.stats)
        except Exception as exc:  # noqa: BLE001 - storage failure: this shard fails, the run goes on
            self.ledger.note_storage_error(exc)
            self.fail(f"commit failed: {type(exc).__name__}: {exc}")
        self.rows = []
