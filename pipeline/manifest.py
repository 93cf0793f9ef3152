"""Read a manifest (CSV, Parquet or JSON Lines) as a stream of record batches, and rows as work items.

Required column: `uri`. Optional: `id` (stable key, else the uri), `media_type`
(`image`/`video`, else guessed from the extension, then from the content). Every other
column is carried into the output rows.

A manifest is never held whole: 100 M rows are ~5 GB of CSV. `ManifestReader.batches()` streams
(CSV and JSON Lines in blocks, Parquet by row group) and hashes the bytes as they pass; planning
(pipeline/planner.py) keeps per-shard integers only, and a run reads the manifest again to build
the items of the shards it executes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .plan import Item
from .storage import open_uri

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pbm", ".gif"}
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp"}
RESERVED = {"uri", "id", "media_type"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# bytes per CSV/JSON block, rows per Parquet batch: ~80,000 rows of a typical manifest per batch, so
# that per-batch costs (a DuckDB call, a numpy sort) vanish; larger blocks raised the peak memory
# (3 M rows: 377 MiB at 4 MiB blocks, 548 MiB at 16 MiB) without planning faster
BLOCK_BYTES = 4 << 20
PARQUET_ROWS = 65_536


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (the message says why and how to fix it)."""


def guess_media_type(uri: str) -> str:
    """'image', 'video' or 'auto' (decided from the content at decode time)."""
    path = uri.split("?", 1)[0].lower()
    dot = path.rfind(".")
    ext = path[dot:] if dot > path.rfind("/") else ""
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return "auto"


def manifest_base(uri: str) -> str:
    """The folder relative uris in a manifest are resolved against."""
    if "://" in uri and not uri.startswith("file://"):
        return uri.rsplit("/", 1)[0]
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.dirname(os.path.abspath(path))


def resolve_uri(u: str, base: str) -> str:
    """Relative paths are relative to the manifest's folder; absolute paths and urls stay."""
    if "://" in u or os.path.isabs(u):
        return u
    return f"{base}/{u}" if "://" in base else os.path.normpath(os.path.join(base, u))


def uri_problem(u: str) -> str:
    """Why a manifest uri cannot be used as written ('' if it can be tried)."""
    if not u:
        return "blank uri in manifest row"
    if "\x00" in u:
        return "uri contains a NUL byte"
    scheme, sep, rest = u.partition("://")
    if not sep:
        return ""
    if not _SCHEME.fullmatch(scheme):
        return f"malformed uri {u!r}: {scheme!r} is not a uri scheme"
    if scheme.lower() in ("s3", "s3a") and not re.fullmatch(r"[^/]+/+[^/].*", rest):
        return f"malformed uri {u!r}: expected s3://bucket/key"
    if not rest.strip("/"):
        return f"malformed uri {u!r}: no path after {scheme}://"
    return ""


class _Hashing(io.RawIOBase):
    """A read-only stream that feeds every byte it passes on to a sha256 (the manifest's fingerprint);
    `prelude` is passed on first without being hashed (the header line before an appended tail)."""

    def __init__(self, raw, sha=None, prelude: bytes = b""):
        self.raw, self.sha, self.prelude = raw, sha or hashlib.sha256(), prelude

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.prelude:
            n = min(len(buffer), len(self.prelude))
            buffer[:n], self.prelude = self.prelude[:n], self.prelude[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha.update(data)
        return len(data)


def _kind(uri: str) -> str:
    lower = uri.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    return "json" if lower.endswith((".jsonl", ".ndjson", ".json")) else "csv"


class ManifestReader:
    """One manifest, read as many times as needed, a batch at a time; the header is checked on opening."""

    def __init__(self, uri: str, endpoint_url: str | None = None):
        self.uri, self.endpoint_url, self.kind = uri, endpoint_url, _kind(uri)
        self.base = manifest_base(uri)
        self.fingerprint: str | None = None     # sha256 of the bytes, once a pass has read them all
        self.rows: int | None = None
        self.header_line = b""                   # CSV: the header row's bytes, put before an appended tail
        self.schema = self._header()              # the columns' types, as a read of the first batch gives them
        self.columns = self.schema.names
        if "uri" not in self.columns:
            raise ManifestError(f"manifest {uri} has no 'uri' column (columns: {', '.join(self.columns) or 'none'})")

    @property
    def extra_names(self) -> list[str]:
        return [n for n in self.columns if n not in RESERVED]

    def _open(self):
        try:
            return open_uri(self.uri, self.endpoint_url)
        except FileNotFoundError:
            raise ManifestError(f"manifest not found: {self.uri}") from None

    def _header(self) -> pa.Schema:
        """The columns and their types without starting a streaming reader (it reads ahead up to 200 MB):
        CSV columns are all text; JSON Lines' types from its first block, as the streaming reader infers."""
        with self._open() as f:
            if self.kind == "parquet":
                try:
                    return pq.ParquetFile(f).schema_arrow
                except pa.ArrowInvalid as exc:
                    raise ManifestError(f"cannot parse manifest {self.uri}: {exc}") from None
            head = f.read(BLOCK_BYTES if self.kind == "json" else 1 << 16)
        if not head.strip():
            raise ManifestError(f"manifest {self.uri} is empty: it needs a header row with a 'uri' column")
        if self.kind == "json":
            try:
                return pajson.read_json(io.BytesIO(head[: head.rfind(b"\n") + 1] or head)).schema
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ManifestError(f"cannot parse manifest {self.uri}: {exc}") from None
        self.header_line = head.split(b"\n", 1)[0] + b"\n"
        names = next(csv.reader([self.header_line.decode("utf-8-sig", "replace")]), [])
        return pa.schema([(name, pa.string()) for name in names])

    def size(self) -> int:
        with self._open() as f:
            return f.size if isinstance(getattr(f, "size", None), int) else f.seek(0, os.SEEK_END)

    def prefix_sha256(self, nbytes: int) -> tuple[hashlib._Hash, bytes]:
        """sha256 of the first `nbytes` bytes, and the last of them (a tail may only start after a newline)."""
        sha, last, left = hashlib.sha256(), b"", nbytes
        with self._open() as f:
            while left and (chunk := f.read(min(left, BLOCK_BYTES))):
                sha.update(chunk)
                last, left = chunk[-1:], left - len(chunk)
        return sha, last

    def batches(self, from_byte: int = 0, first_row: int = 0, sha=None) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(position of the batch's first row, batch), in manifest order; sets `rows` and `fingerprint` at the
        end. `from_byte` (CSV, JSON Lines): read only from there, a row boundary, numbering rows from
        `first_row`; `sha` then holds the hash of the bytes before it."""
        start = first_row
        with self._open() as raw:
            if from_byte:
                raw.seek(from_byte)
            stream = _Hashing(raw, sha, self.header_line if from_byte else b"")
            try:
                for batch in self._read(raw, stream):
                    if batch.num_rows:
                        yield start, batch
                        start += batch.num_rows
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ManifestError(f"cannot parse manifest {self.uri}: {exc}") from None
            if self.kind == "parquet":      # read by row group, not in order: hash the bytes in one more read
                raw.seek(0)
                while chunk := raw.read(BLOCK_BYTES):
                    stream.sha.update(chunk)
            else:
                while stream.read(BLOCK_BYTES):     # whatever the reader left unread (trailing blank lines)
                    pass
        if start == 0:
            raise ManifestError(f"manifest {self.uri} has a header but no rows")
        self.rows, self.fingerprint = start, stream.sha.hexdigest()

    def _read(self, raw, stream) -> Iterator[pa.RecordBatch]:
        if self.kind == "parquet":
            yield from pq.ParquetFile(raw).iter_batches(batch_size=PARQUET_ROWS)
            return
        if self.kind == "json":
            yield from pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=BLOCK_BYTES))
            return
        # every CSV column is text: types must not change when an incremental manifest grows
        types = {name: pa.string() for name in self.columns}
        yield from pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                                  convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                                                       quoted_strings_can_be_null=False))


def text_column(batch: pa.RecordBatch, name: str) -> pa.Array:
    """A column as trimmed text, '' for missing values or a missing column."""
    if name not in batch.schema.names:
        return pa.array([""] * batch.num_rows, pa.string())
    col = batch.column(name)
    if not pa.types.is_string(col.type):
        try:
            col = col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            col = pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string())
    return pc.utf8_trim_whitespace(col.fill_null(""))


def row_keys(batch: pa.RecordBatch, start: int) -> pa.Array:
    """Each row's item id: its `id`, else its uri, else `row-<position>`; vectorised (200 k+ rows/s)."""
    ids, uris = text_column(batch, "id"), text_column(batch, "uri")
    keys = pc.if_else(pc.not_equal(ids, ""), ids, uris)
    blank = pc.equal(keys, "")
    if pc.any(blank).as_py():
        names = pc.binary_join_element_wise("row-", pa.array(np.arange(start, start + batch.num_rows)).cast(pa.string()), "")
        keys = pc.if_else(blank, names, keys)
    return keys


def batch_items(batch: pa.RecordBatch, start: int, rows: np.ndarray, keys: pa.Array, base: str) -> list[Item]:
    """Work items for the given rows of a batch (`keys`: row_keys of the whole batch)."""
    take = pa.array(rows, pa.int64())
    uris = text_column(batch, "uri").take(take).to_pylist()
    types = pc.utf8_lower(text_column(batch, "media_type")).take(take).to_pylist()
    items = []
    for r, u, t, key in zip(rows.tolist(), uris, types, keys.take(take).to_pylist()):
        error = uri_problem(u)
        if t and t not in ("image", "video", "auto"):
            error = error or f"unknown media_type {t!r} (use image or video)"
        items.append(Item(start + r, resolve_uri(u, base) if u and not error else u, key,
                          t or (guess_media_type(u) if u else "auto"), error))
    return items
