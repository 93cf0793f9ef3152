"""`humanseg-batch preview OUT`: a contact sheet (PNG + self-contained HTML) of a sample of results.

Each tile is a source image or video frame with its mask tinted and outlined over it; the HTML
page also lists error rows and draws, per video, person fraction over time. Rows are chosen
with the `frames` view of jobs/query.py, so `--where` takes any SQL predicate on its columns.
"""
from __future__ import annotations

import math
import os

import click
import cv2
import duckdb
import numpy as np

from humanseg_batch.pipeline.decode import DecodeError, decode_chunk, decode_image, probe_video, read_media
from humanseg_batch.pipeline.plan import ChunkPlan, VideoIndex
from humanseg_batch.pipeline.write import mask_key, read_mask

from .preview_page import MAX_ERROR_GROUPS, Tile, caption_lines, errors_html, format_time, page_html, png_bytes
from .query import DEFAULT_MIN_PERSON, Output, OutputError, fail, one_line, open_output

TILE_W, TILE_H, CAPTION_H, GAP = 240, 180, 34, 8      # contact sheet geometry, in pixels
CAPTION_SCALE = 0.38
STRIP_W, STRIP_H = 900, 150
MAX_STRIPS = 50
TINT_BGR, OUTLINE_BGR, BOX_BGR = (255, 0, 200), (0, 255, 255), (0, 200, 0)
TINT_ALPHA = 0.45
BACKGROUND = 32                                          # grey level around letterboxed tiles
TILE_COLUMNS = ("id", "uri", "media_type", "frame_index", "timestamp_s", "mask_uri", "mask_frame",
                "person_fraction", "confidence", "bbox")


# ---- choosing rows ----------------------------------------------------------------------------

def sample_rows(output: Output, where: str, limit: int, seed: int) -> tuple[list[dict], int]:
    """A seeded sample of ok rows matching `where`, spread over items (one frame of each before a second)."""
    cols = ", ".join(TILE_COLUMNS)
    matching = f"SELECT * FROM frames WHERE status = 'ok' AND mask_uri IS NOT NULL AND ({where})"
    sql = f"""
        WITH hashed AS (SELECT *, hash(id, coalesce(frame_index, -1), {int(seed)}) AS h FROM ({matching})),
             ranked AS (SELECT *, row_number() OVER (PARTITION BY id ORDER BY h) AS k FROM hashed)
        SELECT {cols} FROM ranked ORDER BY k, h, id, frame_index LIMIT {int(limit)}"""
    rel = output.con.sql(sql)
    rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
    total = output.con.execute(f"SELECT count(*) FROM ({matching})").fetchall()[0][0]
    rows.sort(key=lambda r: (r["id"], -1 if r["frame_index"] is None else r["frame_index"]))
    return rows, total


def error_groups(output: Output, where: str) -> tuple[list[dict], int]:
    """Error rows matching `where`, grouped by item and message."""
    rel = output.con.sql(f"""
        SELECT id, any_value(uri) AS uri, error, count(*) AS n, min(frame_index) AS first_frame,
               max(frame_index) AS last_frame
        FROM frames WHERE status = 'error' AND ({where}) GROUP BY id, error ORDER BY id, error""")
    rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
    return rows[:MAX_ERROR_GROUPS], sum(r["n"] for r in rows)


def video_series(output: Output, where: str) -> list[tuple[str, list[tuple], list[tuple]]]:
    """For each video with rows matching `where`: its frames (t, fraction, status) and person segments."""
    ids = [r[0] for r in output.con.sql(
        f"SELECT DISTINCT id FROM frames WHERE media_type = 'video' AND ({where}) ORDER BY id "
        f"LIMIT {MAX_STRIPS}").fetchall()]
    series = []
    for item_id in ids:
        frames = output.con.execute(
            "SELECT timestamp_s, person_fraction, status FROM frames WHERE id = ? AND frame_index IS NOT NULL "
            "ORDER BY frame_index", [item_id]).fetchall()
        segments = output.con.execute(
            "SELECT start_s, end_s FROM person_segments WHERE id = ? ORDER BY start_s", [item_id]).fetchall()
        if frames:
            series.append((item_id, frames, segments))
    return series


# ---- drawing tiles ----------------------------------------------------------------------------

class SourceReader:
    """Reads source images and single video frames (BGR), remembering each video's index."""

    def __init__(self, endpoint_url: str | None):
        self.endpoint_url = endpoint_url
        self._index: dict[str, VideoIndex] = {}

    def read(self, row: dict) -> np.ndarray:
        if row["frame_index"] is None:
            rgb = decode_image(read_media(row["uri"], self.endpoint_url))
        else:
            rgb = self._video_frame(row["uri"], int(row["frame_index"]))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    def _video_frame(self, uri: str, i: int) -> np.ndarray:
        if uri not in self._index:
            self._index[uri] = probe_video(uri, self.endpoint_url)
        for _, frame, _ in decode_chunk(uri, self._index[uri], ChunkPlan(chunk=0, frames=(i,)), self.endpoint_url):
            if isinstance(frame, DecodeError):
                raise frame
            return frame
        raise DecodeError(f"frame {i} not decoded")


def overlay(source: np.ndarray, mask: np.ndarray, bbox) -> np.ndarray:
    """Source letterboxed into a tile, person pixels tinted, the mask outlined and the bbox drawn."""
    h, w = mask.shape[:2]
    if source.shape[:2] != (h, w):
        source = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA)
    scale = min(TILE_W / w, TILE_H / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    src = cv2.resize(source, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    person = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0
    tinted = src.copy()
    tinted[person] = (src[person] * (1 - TINT_ALPHA) + np.array(TINT_BGR) * TINT_ALPHA).astype(np.uint8)
    contours, _ = cv2.findContours(person.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, OUTLINE_BGR, 1)
    if bbox is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in bbox)
        cv2.rectangle(tinted, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), BOX_BGR, 1)
    tile = np.full((TILE_H, TILE_W, 3), BACKGROUND, np.uint8)
    y, x = (TILE_H - size[1]) // 2, (TILE_W - size[0]) // 2
    tile[y:y + size[1], x:x + size[0]] = tinted
    return tile


def message_tile(text: str) -> np.ndarray:
    tile = np.full((TILE_H, TILE_W, 3), BACKGROUND, np.uint8)
    cv2.putText(tile, fit_text(text, TILE_W - 16, 0.45), (8, TILE_H // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (220, 220, 220), 1, cv2.LINE_AA)
    return tile


def render_tile(row: dict, reader: SourceReader, endpoint_url: str | None) -> Tile:
    try:
        mask = read_mask(row["mask_uri"], row["mask_frame"], endpoint_url)
    except (OSError, ValueError) as exc:
        return Tile(row, message_tile("mask unreadable"), f"mask unreadable: {exc}")
    note = ""
    try:
        source = reader.read(row)
    except (DecodeError, OSError, ValueError) as exc:   # source moved or broke since the run: show the mask alone
        source, note = np.full(mask.shape + (3,), 96, np.uint8), f"source unavailable: {exc}"
    return Tile(row, overlay(source, mask, row["bbox"]), note)


# ---- captions and the contact sheet -----------------------------------------------------------

def fit_text(text: str, width: int, scale: float, keep_end: bool = False) -> str:
    """OpenCV fonts are ASCII only: replace the rest, and shorten with '...' to fit `width` pixels
    (cutting the start instead of the end with keep_end, so a long path keeps its file name)."""
    text = text.encode("ascii", "replace").decode()
    fits = lambda s: cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width  # noqa: E731
    if fits(text):
        return text
    while text and not fits("..." + text if keep_end else text + "..."):
        text = text[1:] if keep_end else text[:-1]
    return "..." + text if keep_end else text + "..."


def grid(n: int, columns: int) -> tuple[int, int]:
    """(rows, columns) of a contact sheet with n tiles (an empty sheet has one message tile)."""
    n = max(n, 1)
    cols = min(n, columns)
    return math.ceil(n / cols), cols


def contact_sheet(tiles: list[Tile], columns: int) -> np.ndarray:
    """Tiles in a grid, each with a two-line caption under it; GAP pixels between and around them."""
    if not tiles:
        tiles = [Tile({}, message_tile("no matching rows"))]
    rows, cols = grid(len(tiles), columns)
    cell_h = TILE_H + CAPTION_H
    sheet = np.full((rows * cell_h + (rows + 1) * GAP, cols * TILE_W + (cols + 1) * GAP, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        y = GAP + (k // cols) * (cell_h + GAP)
        x = GAP + (k % cols) * (TILE_W + GAP)
        sheet[y:y + TILE_H, x:x + TILE_W] = tile.image
        for line, text in enumerate(caption_lines(tile.row) if tile.row else ()):
            fitted = fit_text(text, TILE_W - 4, CAPTION_SCALE, keep_end=line == 0)
            cv2.putText(sheet, fitted, (x + 2, y + TILE_H + 13 + 15 * line),
                        cv2.FONT_HERSHEY_SIMPLEX, CAPTION_SCALE, (20, 20, 20), 1, cv2.LINE_AA)
    return sheet


# ---- person fraction over time ----------------------------------------------------------------

def draw_strip(title: str, frames: list[tuple], segments: list[tuple], min_fraction: float) -> np.ndarray:
    """Person fraction against time: a line over ok frames, red ticks at error frames, person segments
    shaded green, the presence threshold dashed. The y axis ends at 0.1, 0.2, 0.5 or 1; the time axis
    is labelled at its ends."""
    img = np.full((STRIP_H, STRIP_W, 3), 255, np.uint8)
    left, top, width, bottom = 44, 18, STRIP_W - 56, STRIP_H - 23
    span = max((t or 0.0) for t, _, _ in frames) or 1.0
    peak = max([f for _, f, s in frames if s == "ok" and f is not None] + [min_fraction, 0.0])
    top_fraction = next(v for v in (0.1, 0.2, 0.5, 1.0) if peak <= v)
    x = lambda t: left + round((t or 0.0) / span * (width - 1))  # noqa: E731
    y = lambda f: bottom - round(min(max(f / top_fraction, 0.0), 1.0) * (bottom - top))  # noqa: E731
    for start, stop in segments:
        cv2.rectangle(img, (x(start), top), (max(x(start) + 1, x(stop)), bottom), (200, 240, 200), -1)
    cv2.rectangle(img, (left, top), (left + width - 1, bottom), (150, 150, 150), 1)
    for text, at in ((f"{top_fraction:.2g}", (6, top + 4)), ("0", (6, bottom + 4)), ("0s", (left, STRIP_H - 6)),
                     (format_time(span), (left + width - 44, STRIP_H - 6))):
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(img, fit_text(title, width, 0.4), (left, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 1,
                cv2.LINE_AA)
    for x0 in range(left, left + width, 8):
        cv2.line(img, (x0, y(min_fraction)), (min(x0 + 3, left + width - 1), y(min_fraction)), (120, 120, 120), 1)
    prev = None
    for t, fraction, status in frames:
        if status != "ok" or fraction is None:
            cv2.line(img, (x(t), bottom - 7), (x(t), bottom), (0, 0, 230), 1)
            prev = None
            continue
        cv2.line(img, prev or (x(t), y(fraction)), (x(t), y(fraction)), (200, 90, 20), 1, cv2.LINE_AA)
        prev = (x(t), y(fraction))
    return img


# ---- the command ------------------------------------------------------------------------------

@click.command(epilog="Exit codes: 0 written; 2 missing OUT or a bad --where predicate.")
@click.argument("out")
@click.option("--where", default="true", show_default=True,
              help="SQL predicate on the `frames` view, e.g. \"confidence < 0.8\" or \"status = 'error'\".")
@click.option("--limit", type=click.IntRange(min=0), default=24, show_default=True, help="Tiles in the sample.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="preview", show_default=True,
              help="Local folder for contact_sheet.png, index.html and strips/.")
@click.option("--seed", type=int, default=0, show_default=True, help="Another seed draws another sample.")
@click.option("--columns", type=click.IntRange(min=1), default=6, show_default=True, help="Tiles per row of the PNG.")
@click.option("--min-person-fraction", type=click.FloatRange(0, 1), default=DEFAULT_MIN_PERSON, show_default=True,
              help="A frame shows a person when person_fraction is above this (the strips' segments).")
@click.option("--endpoint-url", help="S3-compatible endpoint (or HUMANSEG_S3_ENDPOINT_URL).")
def preview(out, where, limit, out_dir, seed, columns, min_person_fraction, endpoint_url):
    """Draw a sample of OUT's masks over their sources: a PNG contact sheet and a self-contained HTML page."""
    try:
        output = open_output(out, endpoint_url, min_person_fraction)
        rows, matching = sample_rows(output, where, limit, seed)
        errors, n_errors = error_groups(output, where)
        series = video_series(output, where)
    except OutputError as exc:
        fail(str(exc))
    except duckdb.Error as exc:
        fail(f"--where {where!r}: {one_line(exc)}")
    reader = SourceReader(endpoint_url)
    tiles = [render_tile(r, reader, endpoint_url) for r in rows]
    strips = [(i, draw_strip(i, frames, segs, min_person_fraction)) for i, frames, segs in series]
    os.makedirs(os.path.join(out_dir, "strips"), exist_ok=True)
    written = [os.path.join(out_dir, "contact_sheet.png")]
    with open(written[0], "wb") as f:
        f.write(png_bytes(contact_sheet(tiles, columns)))
    for item_id, img in strips:
        written.append(os.path.join(out_dir, "strips", mask_key(item_id).replace("/", "-") + ".png"))
        with open(written[-1], "wb") as f:
            f.write(png_bytes(img))
    summary = (f"{len(tiles)} of {matching} matching ok row(s), seed {seed}, filter: {where}; "
               f"{len(output.files)} committed shard(s).")
    page = page_html(f"humanseg preview: {out}", summary, tiles, strips, errors_html(errors, n_errors))
    written.insert(1, os.path.join(out_dir, "index.html"))
    with open(written[1], "w", encoding="utf-8") as f:
        f.write(page)
    for path in written:
        click.echo(path)
