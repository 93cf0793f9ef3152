"""Merge committed shard files into part files of about a target size (the layout: pipeline/parts.py).

One shard file per 64 items means 1.5 M small files for 100 M items: every listing, `status` and
query pays for each. A part holds thousands of shards; its record keeps every shard's marker fields,
so resume, retry and `status` work from it as from the markers. Steps, for each part:

    1. write metadata/<part>.parquet            crash: a part without record, removed by the next writer
    2. write _compacted/<part>.parquet          the commit: its shards are read from the part only
    3. delete the merged records, parts, markers and shard files (now leftovers; crash: the next writer)

So a crash leaves the old state or one the next `compact` or `run` finishes, and no reader ever takes
a shard's rows from two files. Inputs are checked against their markers (sha256) first; a damaged one
is left as it is (`retry` redoes it). Parts under half the target are merged again with new shards.
Parts are sized by a trial merge of a few shard files (merged, a shard takes 5-20 times fewer bytes).
Call under OUT's lease (jobs/compact_cli.py). No Ray, no CLI here.
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from posixpath import basename
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .faults import pause_point
from .ledger import Ledger
from .parts import RECORD_SCHEMA, PartWriter, drop_part, part_path, read_record, record_row, write_part
from .storage import Storage
from .write import METADATA_DIR, parquet_bytes, shard_parquet_path

DEFAULT_TARGET_BYTES = 256 * 2**20      # 128-512 MB: a few row groups of 64 MiB, one GET per column chunk
READ_BATCH = 256                        # shard files fetched at once (concurrent GETs on S3)
SAMPLE_FILES = 64                       # shard files merged on trial to size the parts


@dataclass
class Input:
    kind: str       # "shard" (a shard's own file) or "part" (a part under half the target)
    name: str
    bytes: int      # a part's size; a shard file's share of a part (its size x the merged ratio)


@dataclass
class CompactSummary:
    shards: int = 0                 # shard files merged
    parts_merged: int = 0           # small parts merged again
    parts_written: int = 0
    bytes_written: int = 0
    leftovers: int = 0              # files of an interrupted run or compaction removed first
    skipped: dict[str, str] = field(default_factory=dict)     # input -> why it was left as it is
    parts_total: int = 0            # after the compaction
    unmerged: int = 0               # committed shards still in their own file
    seconds: float = 0.0


def merged_ratio(ledger: Ledger, shards: list[str]) -> float:
    """Bytes in a part per byte of shard file, measured by merging the first few files: a file of 64 rows
    is mostly footer, page headers and short zstd frames (10,000 synthetic shards: 80 MB of files made a
    3.7 MB part)."""
    blobs = ledger.storage.read_many([shard_parquet_path(s) for s in shards[:SAMPLE_FILES]])
    try:
        merged = parquet_bytes(pa.concat_tables([pq.read_table(pa.BufferReader(b)) for b in blobs.values()]))
    except (ValueError, pa.ArrowException):     # unreadable or unlike files: merge_group says which
        return 1.0
    return min(1.0, len(merged) / max(1, sum(map(len, blobs.values()))))


def plan_groups(ledger: Ledger, target: int) -> list[list[Input]]:
    """Inputs (parts under half the target first, then shard files in name order) cut into groups that
    make parts of about `target` bytes, from one listing and a sample; a group that is one part already is
    no work, so every part but the last is at least half the target and a rerun finds nothing to do."""
    sizes = ledger.storage.sizes(METADATA_DIR)
    parts = [Input("part", n, sizes[basename(part_path(n))]) for n in sorted(ledger.parts)
             if sizes.get(basename(part_path(n)), target) < target / 2]
    files = {s: basename(shard_parquet_path(s)) for s in ledger.unmerged_shards()}
    # a shard whose file is missing is damaged: left to `retry`, which redoes it
    present = [s for s, name in files.items() if name in sizes]
    ratio = merged_ratio(ledger, present) if present else 1.0
    shards = [Input("shard", s, int(sizes[files[s]] * ratio)) for s in present]
    groups: list[list[Input]] = []
    size = 0
    for item in parts + shards:
        if not groups or size + item.bytes > target:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.bytes
    return [g for g in groups if not (len(g) == 1 and g[0].kind == "part")]


def _input_problem(data: bytes | None, want: dict) -> str | None:
    """Why a file's bytes are not the ones committed (`want`: the marker's or record's bytes and sha256)."""
    if data is None:
        return "missing"
    if "bytes" in want and len(data) != want["bytes"]:
        return f"{len(data)} bytes, {want['bytes']} were committed"
    if "sha256" in want and hashlib.sha256(data).hexdigest() != want["sha256"]:
        return "its sha256 differs from the committed one"
    return None


def _add(writer: PartWriter, table: pa.Table, rel: str) -> None:
    try:
        writer.add(table)
    except (ValueError, pa.ArrowException) as exc:
        raise ValueError(f"{rel} has other columns than the files merged before it ({exc}); every Parquet file of "
                         "an output should have one schema: compact cannot merge it") from None


def _merge_parts(ledger: Ledger, parts: list[Input], writer: PartWriter, summary: CompactSummary) -> tuple:
    """Add small parts' rows; return their record rows and names."""
    records, names = [], []
    for item in parts:
        try:
            data = ledger.storage.read_bytes(part_path(item.name))
        except FileNotFoundError:
            data = None
        why = _input_problem(data, ledger.parts[item.name].info)
        if why:
            summary.skipped[item.name] = why
            continue
        source = pq.ParquetFile(pa.BufferReader(data))
        for i in range(source.num_row_groups):
            _add(writer, source.read_row_group(i), part_path(item.name))
        records.append(read_record(ledger.storage, item.name, None).table)
        names.append(item.name)
    return records, names


def _merge_shards(ledger: Ledger, shards: list[Input], writer: PartWriter, summary: CompactSummary) -> tuple:
    """Add shard files' rows, checked against their markers; return their record rows and names."""
    records, names = [], []
    for start in range(0, len(shards), READ_BATCH):
        batch = [s.name for s in shards[start:start + READ_BATCH]]
        markers = ledger.markers_of(batch)
        blobs = ledger.storage.read_many([shard_parquet_path(s) for s in batch])
        sound = []
        for shard in batch:
            data, marker = blobs.get(shard_parquet_path(shard)), markers.get(shard)
            why = "its marker is gone" if marker is None else _input_problem(data, marker.get("parquet", {}))
            if why:
                summary.skipped[shard] = why
            else:
                sound.append(shard)
        # decoding releases the GIL: 2.3 ms a 64-row file on one thread, the bulk of a compaction
        with ThreadPoolExecutor(4) as pool:
            tables = list(pool.map(lambda s: pq.read_table(pa.BufferReader(blobs[shard_parquet_path(s)])), sound))
        rows = []
        for shard, table in zip(sound, tables):
            _add(writer, table, shard_parquet_path(shard))
            # markers of early versions lack these two
            rows.append(record_row(dict(markers[shard], shard=shard, rows=table.num_rows), ""))
            names.append(shard)
        records.append(pa.Table.from_pylist(rows, RECORD_SCHEMA))   # Arrow, not dicts: 64 ids a shard
    return records, names


def merge_group(ledger: Ledger, group: list[Input], summary: CompactSummary) -> str | None:
    """One part from a group of inputs (steps 1-3 above); its name, or None if no input was sound."""
    writer = PartWriter()
    records, parts = _merge_parts(ledger, [i for i in group if i.kind == "part"], writer, summary)
    shard_records, shards = _merge_shards(ledger, [i for i in group if i.kind == "shard"], writer, summary)
    if not parts and not shards:
        return None
    data = writer.finish()
    name = write_part(ledger.storage, data, pa.concat_tables(records + shard_records), parts)
    pause_point("compact-record")
    for old in parts:
        drop_part(ledger.storage, old)
    ledger.remove_merged(shards)
    summary.shards += len(shards)
    summary.parts_merged += len(parts)
    summary.parts_written += 1
    summary.bytes_written += len(data)
    return name


def compact(storage: Storage, target_bytes: int = DEFAULT_TARGET_BYTES, log=print) -> CompactSummary:
    """Merge OUT's committed shard files (and small parts) into parts of about `target_bytes`. The caller
    holds OUT's lease. Rerun after a crash, it finishes what was left half-done; run again, it does nothing."""
    started, summary = time.time(), CompactSummary()
    ledger = Ledger(storage)
    ledger.remove_temp_files()
    summary.leftovers = len(ledger.remove_leftovers())     # also finishes an interrupted compaction
    ledger = Ledger(storage)
    groups = plan_groups(ledger, target_bytes)
    files = sum(len(g) for g in groups)
    log(f"{files} file(s) to merge into {len(groups)} part(s) of about {target_bytes / 1e6:.0f} MB")
    for k, group in enumerate(groups, 1):
        t = time.time()
        name = merge_group(ledger, group, summary)
        log(f"part {k}/{len(groups)}: {name or 'nothing sound to merge'} ({len(group)} file(s), "
            f"{time.time() - t:.1f}s)")
    after = Ledger(storage)
    summary.parts_total, summary.unmerged = len(after.parts), len(after.unmerged_shards())
    summary.seconds = time.time() - started
    return summary
