"""Read a manifest (CSV, Parquet or JSON Lines) into validated work items.

Required column: `uri`. Optional: `id` (stable key, else the uri), `media_type`
(`image`/`video`, else guessed from the extension, then from the content). Every other
column is carried into the output rows.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .storage import read_uri

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pbm", ".gif"}
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp"}
RESERVED = {"uri", "id", "media_type"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (the message says why and how to fix it)."""


@dataclass
class Manifest:
    items: pa.Table                      # columns: position, uri, id, media_type, error
    extras: pa.Table                     # the manifest's other columns, aligned with items
    fingerprint: str                     # sha256 of the manifest bytes
    duplicates: list[str] = field(default_factory=list)   # ids seen more than once (kept once)
    _rows: dict[int, int] | None = field(default=None, repr=False, compare=False)   # position -> row

    def __len__(self) -> int:
        return self.items.num_rows

    def extras_at(self, positions: list[int]) -> pa.Table:
        """The extra columns of the items at these manifest positions, one row per position."""
        if self._rows is None:
            self._rows = {p: k for k, p in enumerate(self.items.column("position").to_pylist())}
        return self.extras.take(pa.array([self._rows[p] for p in positions], pa.int64()))


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


def _parse(data: bytes, uri: str) -> pa.Table:
    lower = uri.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            return pq.read_table(io.BytesIO(data))
        if lower.endswith((".jsonl", ".ndjson", ".json")):
            return pajson.read_json(io.BytesIO(data))
        # every CSV column is text: types must not change when an incremental manifest grows
        first_line = data.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
        types = {name: pa.string() for name in next(csv.reader([first_line]), [])}
        return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        if not data.strip():
            raise ManifestError(f"manifest {uri} is empty: it needs a header row with a 'uri' column") from None
        raise ManifestError(f"cannot parse manifest {uri}: {exc}") from None


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


def _text_column(table: pa.Table, name: str) -> list[str]:
    if name not in table.column_names:
        return [""] * table.num_rows
    return ["" if v is None else str(v).strip() for v in table.column(name).to_pylist()]


def read_manifest(uri: str, endpoint_url: str | None = None) -> Manifest:
    """Read and validate a manifest; whole-file problems raise ManifestError, row problems become item errors."""
    try:
        data = read_uri(uri, endpoint_url)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {uri}") from None
    if not data.strip():
        raise ManifestError(f"manifest {uri} is empty: it needs a header row with a 'uri' column")
    table = _parse(data, uri)
    if "uri" not in table.column_names:
        raise ManifestError(f"manifest {uri} has no 'uri' column (columns: {', '.join(table.column_names) or 'none'})")
    if table.num_rows == 0:
        raise ManifestError(f"manifest {uri} has a header but no rows")
    uris = _text_column(table, "uri")
    ids = _text_column(table, "id")
    types = [t.lower() for t in _text_column(table, "media_type")]
    base = manifest_base(uri)
    positions, out_uris, out_ids, out_types, errors, keep = [], [], [], [], [], []
    seen: set[str] = set()
    duplicates: list[str] = []
    for pos, (u, i, t) in enumerate(zip(uris, ids, types)):
        item_id = i or u or f"row-{pos}"
        if item_id in seen:
            duplicates.append(item_id)
            continue
        seen.add(item_id)
        error = uri_problem(u)
        if t and t not in ("image", "video", "auto"):
            error = error or f"unknown media_type {t!r} (use image or video)"
        positions.append(pos)
        out_uris.append(resolve_uri(u, base) if u and not error else u)
        out_ids.append(item_id)
        out_types.append(t or (guess_media_type(u) if u else "auto"))
        errors.append(error)
        keep.append(pos)
    items = pa.table({"position": pa.array(positions, pa.int64()), "uri": out_uris, "id": out_ids,
                      "media_type": out_types, "error": errors})
    extra_names = [n for n in table.column_names if n not in RESERVED]
    extras = table.select(extra_names).take(pa.array(keep, pa.int64()))
    return Manifest(items=items, extras=extras, fingerprint=hashlib.sha256(data).hexdigest(),
                    duplicates=sorted(set(duplicates)))
