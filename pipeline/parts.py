"""Part files: many committed shards' rows merged into one Parquet file, and the record that commits them.

    OUT/metadata/<part>.parquet           the rows of many shards (same schema as a shard's file)
    OUT/_compacted/<part>.parquet         its record, one row per shard: the shard's marker fields (rows,
                                          rows_ok, rows_error, video_frames, ids, committed_at, other
                                          stats) and the part's name; the part's rows, bytes, sha256 and
                                          the parts it `replaces` sit in the file's key-value metadata

Part names start with `part-` (shard names with `shard-`). The record is written after its part and is
the commit point: a part without a record is a leftover; a shard in a record is read from the part
only, whatever marker or shard file of it is still around (leftovers of an interrupted compaction).
A record that another record `replaces` (a part merged again, or rewritten without some shards) is
void. So each shard is counted once in every state a crash can leave. Read through the ledger
(pipeline/ledger.py); written by pipeline/compact.py and by the ledger's uncommit.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .faults import pause_point
from .storage import Storage
from .write import METADATA_DIR

COMPACTED_DIR = "_compacted"
PART_PREFIX = "part-"
INFO_KEY = b"humanseg_batch.part"
# what planning and status need: not the ids (the bulk of a record: 64 ids a shard), nor `part` (the
# record's own name); 1.56 M shards (100 M items) in 100 records: 0.5 s, 110 MB of Arrow
LIGHT = ["shard", "rows", "rows_ok", "rows_error", "video_frames", "items"]
RECORD_SCHEMA = pa.schema([
    ("shard", pa.string()), ("part", pa.string()),
    ("rows", pa.int64()), ("rows_ok", pa.int64()), ("rows_error", pa.int64()), ("video_frames", pa.int64()),
    ("items", pa.int64()), ("ids", pa.list_(pa.string())), ("committed_at", pa.float64()),
    ("stats", pa.string()),     # the marker's other fields as JSON (units, timings)
])
_MARKER_FIELDS = {"shard", "rows", "rows_ok", "rows_error", "video_frames", "ids", "committed_at", "parquet",
                  "part"}


def part_path(part: str) -> str:
    return f"{METADATA_DIR}/{part}.parquet"


def record_path(part: str) -> str:
    return f"{COMPACTED_DIR}/{part}.parquet"


def is_part_file(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(".parquet")


def new_part_name() -> str:
    """Unique and in creation order: a rewritten part never takes an old name."""
    return f"{PART_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def record_row(marker: dict, part: str) -> dict:
    """A shard's marker as a record row."""
    return {"shard": marker["shard"], "part": part, "rows": marker.get("rows", 0),
            "rows_ok": marker.get("rows_ok", 0), "rows_error": marker.get("rows_error", 0),
            "video_frames": marker.get("video_frames", marker.get("frames", 0)),
            "items": len(marker.get("ids", ())), "ids": list(marker.get("ids", ())),
            "committed_at": marker.get("committed_at"),
            "stats": json.dumps({k: v for k, v in marker.items() if k not in _MARKER_FIELDS}, sort_keys=True)}


@dataclass
class PartRecord:
    """One committed part: its info (file, rows, bytes, sha256, replaces) and one row per shard."""
    name: str
    info: dict
    table: pa.Table

    def markers(self) -> dict[str, dict]:
        """Shard -> a marker as the shard's own would read (needs the full record)."""
        out = {}
        for row in self.table.to_pylist():
            extra = json.loads(row.pop("stats") or "{}")
            row.pop("items")
            out[row["shard"]] = dict(extra, **row, parquet=self.info)
        return out


class PartWriter:
    """Rows of many shards into one Parquet file in memory, in row groups of about ROW_GROUP_BYTES (one
    shard's 64 rows a row group would make a part slow to scan): memory holds the compressed part and
    one row group."""
    ROW_GROUP_BYTES = 64 * 2**20

    def __init__(self) -> None:
        self._sink = pa.BufferOutputStream()
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._sink, table.schema, compression="zstd")
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= self.ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            group = pa.concat_tables(self._pending)
            self._writer.write_table(group, row_group_size=max(1, group.num_rows))
            self._pending, self._pending_bytes = [], 0

    def finish(self) -> bytes:
        if self._writer is None:
            raise ValueError("a part needs rows")
        self._flush()
        self._writer.close()
        return self._sink.getvalue().to_pybytes()


def write_part(storage: Storage, data: bytes, rows: pa.Table, replaces: list[str]) -> str:
    """Write a part file, then its record (the commit). `rows`: record rows (RECORD_SCHEMA, any `part`).
    Returns the part's name."""
    name = new_part_name()
    storage.write_bytes(part_path(name), data)
    pause_point("compact-part")
    info = {"file": part_path(name), "rows": pq.read_metadata(pa.BufferReader(data)).num_rows, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "replaces": sorted(replaces), "created_at": time.time()}
    rows = rows.set_column(rows.schema.get_field_index("part"), "part", pa.array([name] * rows.num_rows, pa.string()))
    table = rows.cast(RECORD_SCHEMA).replace_schema_metadata({INFO_KEY: json.dumps(info).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(record_path(name), sink.getvalue().to_pybytes())
    return name


def drop_part(storage: Storage, name: str) -> None:
    """Uncommit a whole part: record first (its shards stop being committed), then the file."""
    storage.remove(record_path(name))
    storage.remove(part_path(name))


def rewrite_without(storage: Storage, name: str, gone: set[str], info: dict) -> str | None:
    """Uncommit some shards of a part: a new part without their rows, whose record replaces this one, then
    the old record and file go. A part that does not read back as recorded (missing, other bytes, rows of
    other shards) goes whole, and its other shards are redone too. Returns the new part's name, if any."""
    record = read_record(storage, name, None)
    keep = record.table.filter(pc.invert(pc.is_in(record.table["shard"], pa.array(sorted(gone), pa.string()))))
    new = None
    try:
        data = storage.read_bytes(part_path(name)) if keep.num_rows else None
    except FileNotFoundError:
        data = None
    if data is not None and hashlib.sha256(data).hexdigest() == info.get("sha256"):
        writer, part = PartWriter(), pq.ParquetFile(pa.BufferReader(data))
        for i in range(part.num_row_groups):
            group = part.read_row_group(i)
            writer.add(group.filter(pc.invert(pc.is_in(group["shard"], pa.array(sorted(gone), pa.string())))))
        if writer.rows == pc.sum(keep["rows"]).as_py():
            new = write_part(storage, writer.finish(), keep, [name])
    drop_part(storage, name)
    return new


def read_record(storage: Storage, name: str, columns: list[str] | None) -> PartRecord | None:
    """A part's record (`columns`: those only), or None if it is gone or not Parquet (damaged by hand: its
    part is then a leftover and its shards are redone whole)."""
    try:    # through a file object: pyarrow over fsspec's filesystem wrapper took 4x longer
        with storage.open(record_path(name)) as f:
            table = pq.read_table(f, columns=columns)
    except (FileNotFoundError, pa.ArrowInvalid):
        return None
    info = json.loads((table.schema.metadata or {}).get(INFO_KEY, b"{}"))
    return PartRecord(name, info, table.replace_schema_metadata(None))


def record_names(storage: Storage) -> list[str]:
    """Names of every part that has a record file, live or not."""
    return [n[: -len(".parquet")] for n in storage.list(COMPACTED_DIR) if is_part_file(n)]


def read_records(storage: Storage, columns: list[str] | None = LIGHT) -> dict[str, PartRecord]:
    """The live records (not replaced by another), part name -> record; `columns=None` reads all."""
    names = record_names(storage)
    with ThreadPoolExecutor(8) as pool:
        found = [r for r in pool.map(lambda n: read_record(storage, n, columns), names) if r is not None]
    replaced = {p for r in found for p in r.info.get("replaces", ())}
    return {r.name: r for r in found if r.name not in replaced}
