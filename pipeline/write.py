"""Output layout, mask files and Parquet rows: every path rule of OUT except the run record and
the shard markers, which belong to the ledger (pipeline/ledger.py), and the part files that `compact`
merges shards into (pipeline/parts.py).

    OUT/masks/<kk>/<slug>-<hash>.png       one mask per image (0 background, 255 person)
    OUT/masks/<kk>/<slug>-<hash>/chunk-<c>.mov   a video chunk's masks, 1-bit PNG frames, frame `mask_frame`
    OUT/metadata/<shard>.parquet           one row per image / processed frame
"""
from __future__ import annotations

import hashlib
import io
import re
from fractions import Fraction

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MASKS_DIR = "masks"
# zlib level of video mask frames: 1-bit frames deflate to a few KiB at any level (1080p: 2.7 KiB at 1, 2.6 at 3,
# 1.4 at 4 for twice the time); 1 was the fastest measured (1.0-1.4 ms a 1080p frame, one thread)
MASK_PNG_LEVEL = "1"
METADATA_DIR = "metadata"

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("uri", pa.string()), ("media_type", pa.string()),
    ("frame_index", pa.int64()), ("timestamp_s", pa.float64()),
    ("width", pa.int32()), ("height", pa.int32()),
    ("mask_uri", pa.string()), ("mask_frame", pa.int32()),
    ("person_fraction", pa.float32()), ("bbox", pa.list_(pa.int32(), 4)), ("confidence", pa.float32()),
    ("status", pa.string()), ("error", pa.string()),
    ("model", pa.string()), ("weights_sha256", pa.string()),
    ("shard", pa.string()), ("chunk", pa.int32()), ("manifest_row", pa.int64()),
    ("rle", pa.string()),   # COCO compressed RLE of the mask (column-major, height x width), with --rle
])
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def mask_key(item_id: str) -> str:
    """A safe relative key for an item: '<2 hex>/<readable slug>-<hash>'. No '/', '..' or NUL can leak
    through from the id, so a mask path can never leave OUT."""
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()
    base = item_id.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    slug = _SLUG.sub("_", base).strip("._")[:60] or "item"
    return f"{digest[:2]}/{slug}-{digest[:16]}"


def image_mask_path(item_id: str) -> str:
    return f"{MASKS_DIR}/{mask_key(item_id)}.png"


def chunk_mask_path(item_id: str, chunk: int) -> str:
    return f"{MASKS_DIR}/{mask_key(item_id)}/chunk-{chunk:05d}.mov"


def shard_parquet_path(shard: str) -> str:
    return f"{METADATA_DIR}/{shard}.parquet"


def coco_rle(mask: np.ndarray) -> str:
    """COCO's compressed RLE string of a binary mask: run lengths over the column-major pixels,
    starting with background, each stored relative to the run two before in 5-bit groups."""
    flat = mask.ravel(order="F") > 0
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def encode_png(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


class MaskVideoWriter:
    """Appends masks of one video chunk to an in-memory QuickTime file of 1-bit PNG frames (lossless).

    A mask is binary, so each frame is packed to one bit per pixel and deflated: at 1080p that costs
    2-4 ms a frame on one thread against 17-27 ms for FFV1 on 8-bit grey (the former format, which
    could not keep up with decoding), at 2.5 KiB against 0.6 KiB a frame (README: mask encodings).
    FFmpeg, OpenCV and PyAV read it; a decoded frame is 0/255 grey again.
    """

    def __init__(self, width: int, height: int, rate: Fraction | int = 25):
        self.size = (width, height)
        self._buf = io.BytesIO()
        # bitexact: no encoder string or creation time, so equal masks give equal files
        self._container = av.open(self._buf, "w", format="mov", options={"fflags": "+bitexact"})
        self._stream = self._container.add_stream("png", rate=rate, options={
            "flags": "+bitexact", "compression_level": MASK_PNG_LEVEL, "threads": "1"})
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "monob"
        self._rows: np.ndarray | None = None     # the packed frame, padded to the plane's line size
        self.count = 0

    def add(self, mask: np.ndarray) -> int:
        """Append a mask (0 background, non-zero person); return its position (`mask_frame`) in the file."""
        if (mask.shape[1], mask.shape[0]) != self.size:
            mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_NEAREST)
        frame = av.VideoFrame(self.size[0], self.size[1], "monob")
        plane = frame.planes[0]
        if self._rows is None:
            self._rows = np.zeros((self.size[1], plane.line_size), np.uint8)
        width = (self.size[0] + 7) // 8
        self._rows[:, :width] = np.packbits(mask, axis=1)     # any non-zero pixel is a 1 bit
        plane.update(self._rows)
        frame.pts = self.count
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.count += 1
        return self.count - 1

    def finish(self) -> bytes:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._buf.getvalue()


def read_mask(mask_uri: str, mask_frame: int | None = None, endpoint_url: str | None = None) -> np.ndarray:
    """Read one mask back (HxW uint8) from a row's mask_uri (+ mask_frame for videos)."""
    from .storage import read_uri

    data = read_uri(mask_uri, endpoint_url)
    if mask_frame is None:
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"unreadable mask {mask_uri}")
        return mask
    with av.open(io.BytesIO(data)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == mask_frame:
                return frame.to_ndarray(format="gray")
    raise ValueError(f"{mask_uri} has no frame {mask_frame}")


def rows_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed like ROW_SCHEMA) sorted by manifest row and frame."""
    rows = sorted(rows, key=lambda r: (r["manifest_row"], -1 if r.get("frame_index") is None else r["frame_index"]))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def with_extras(table: pa.Table, extras: pa.Table) -> pa.Table:
    """`table` with the manifest's extra columns, one extras row per table row; a name that clashes
    with an output column gets `manifest_`."""
    for name in extras.column_names:
        out_name = f"manifest_{name}" if name in ROW_SCHEMA.names else name
        table = table.append_column(out_name, extras.column(name))
    return table


def extras_columns(extras: pa.Table) -> list[dict]:
    """Names and types of the manifest's extra columns, as the run record keeps them (all-empty columns,
    typed null by the CSV reader, are kept as strings so that later values fit)."""
    return [{"name": f.name, "type": "string" if pa.types.is_null(f.type) else str(f.type)} for f in extras.schema]


def conform_extras(extras: pa.Table, fixed: list[dict]) -> tuple[pa.Table, list[str]]:
    """The manifest's extra columns shaped as `fixed` (the first run's), so that every Parquet file of an
    output has one schema and any reader takes the folder whole: a column missing now is null, a type is
    cast (ValueError if the values do not fit). Returns the table and the new columns, which are left out."""
    arrays = []
    for col in fixed:
        try:
            typ = pa.type_for_alias(col["type"])
        except ValueError:      # a type without an alias: kept as the manifest gives it
            typ = extras.column(col["name"]).type if col["name"] in extras.column_names else pa.string()
        if col["name"] not in extras.column_names:
            arrays.append(pa.nulls(extras.num_rows, typ))
            continue
        try:
            arrays.append(extras.column(col["name"]).cast(typ))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"manifest column {col['name']!r} was {col['type']} in the first run into this output; "
                             f"its values now are not ({exc}). Use another --output, or fix the column.") from None
    new = [n for n in extras.column_names if n not in {c["name"] for c in fixed}]
    return pa.table(arrays, names=[c["name"] for c in fixed]) if fixed else extras.select([]), new


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
