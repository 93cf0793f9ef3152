"""`humanseg-batch preview OUT`: a contact sheet (PNG + self-contained HTML) of a sample of results.

Each tile is a source image or video frame with its mask tinted and outlined over it; the HTML
page also lists error rows and draws, per video, person fraction over time. Rows are chosen
with the `frames` view of jobs/query.py, so `--where` takes any SQL predicate on its columns.
"""
from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass

import click
import cv2
import duckdb
import numpy as np

from humanseg_batch.pipeline.decode import DecodeError, decode_chunk, decode_image, probe_video, read_media
from humanseg_batch.pipeline.plan import ChunkPlan, VideoIndex
from humanseg_batch.pipeline.write import mask_key, read_mask

from .query import DEFAULT_MIN_PERSON, Output, OutputError, fail, one_line, open_output

TILE_W, TILE_H, CAPTION_H, GAP = 240, 180, 34, 8      # contact sheet geometry, in pixels
CAPTION_SCALE = 0.38
STRIP_W, STRIP_H = 900, 150
MAX_STRIPS, MAX_ERROR_GROUPS = 50, 500
TINT_BGR, OUTLINE_BGR, BOX_BGR = (255, 0, 200), (0, 255, 255), (0, 200, 0)
TINT_ALPHA = 0.45
BACKGROUND = 32                                          # grey level around letterboxed tiles
TILE_COLUMNS = ("id", "uri", "media_type", "frame_index", "timestamp_s", "mask_uri", "mask_frame",
                "person_fraction", "confidence", "bbox")


@dataclass
class Tile:
    row: dict
    image: np.ndarray          # TILE_H x TILE_W x 3, BGR
    note: str = ""             # why the source is missing, if it is


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

def format_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:05.2f}"


def caption_lines(row: dict) -> tuple[str, str]:
    where = "image" if row["frame_index"] is None else f"frame {row['frame_index']} @ {format_time(row['timestamp_s'])}"
    conf = "" if row["confidence"] is None else f" | conf {row['confidence']:.2f}"
    return row["id"], f"{where} | {100 * (row['person_fraction'] or 0):.0f}% person{conf}"


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

def nice_step(span: float, max_ticks: int = 10) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if span / step <= max_ticks:
            return step
    return span / max_ticks


def tick_label(t: float, span: float) -> str:
    if span >= 60:
        return f"{int(t // 60)}:{int(t % 60):02d}"
    return f"{t:.1f}s" if t % 1 else f"{int(t)}s"


@dataclass
class Axes:
    """Plot area of a strip: time 0..span across, person fraction 0..top_fraction up."""

    span: float
    top_fraction: float
    left: int = 44
    top: int = 18
    width: int = STRIP_W - 44 - 12
    height: int = STRIP_H - 18 - 22

    def x(self, t: float | None) -> int:
        return self.left + int(round((t or 0.0) / self.span * (self.width - 1)))

    def y(self, fraction: float) -> int:
        f = min(max(fraction / self.top_fraction, 0.0), 1.0)
        return self.top + int(round((1 - f) * (self.height - 1)))


def draw_axes(img: np.ndarray, ax: Axes, title: str) -> None:
    grey, font = (60, 60, 60), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, (ax.left, ax.top), (ax.left + ax.width - 1, ax.top + ax.height - 1), (150, 150, 150), 1)
    for f in (0.0, ax.top_fraction / 2, ax.top_fraction):
        cv2.putText(img, f"{f:.2g}", (6, ax.y(f) + 4), font, 0.35, grey, 1, cv2.LINE_AA)
    step = nice_step(ax.span)
    for k in range(int(ax.span // step + 1e-9) + 1):
        t = k * step
        cv2.line(img, (ax.x(t), ax.top + ax.height), (ax.x(t), ax.top + ax.height + 3), grey, 1)
        cv2.putText(img, tick_label(t, ax.span), (max(0, ax.x(t) - 10), STRIP_H - 6), font, 0.33, grey, 1,
                    cv2.LINE_AA)
    cv2.putText(img, fit_text(title, ax.width, 0.4), (ax.left, 13), font, 0.4, (20, 20, 20), 1, cv2.LINE_AA)


def draw_strip(title: str, frames: list[tuple], segments: list[tuple], min_fraction: float) -> np.ndarray:
    """Person fraction against time: a line over ok frames, red ticks at error frames, person
    segments shaded green, the presence threshold dashed. The y axis ends at 0.1, 0.2, 0.5 or 1."""
    img = np.full((STRIP_H, STRIP_W, 3), 255, np.uint8)
    end = max((t or 0.0) for t, _, _ in frames)
    peak = max([f for _, f, s in frames if s == "ok" and f is not None] + [min_fraction, 0.0])
    ax = Axes(span=end if end > 0 else 1.0, top_fraction=next(v for v in (0.1, 0.2, 0.5, 1.0) if peak <= v))
    for start, stop in segments:
        cv2.rectangle(img, (ax.x(start), ax.top), (max(ax.x(start) + 1, ax.x(stop)), ax.top + ax.height - 1),
                      (200, 240, 200), -1)
    draw_axes(img, ax, title)
    for x in range(ax.left, ax.left + ax.width, 8):
        cv2.line(img, (x, ax.y(min_fraction)), (min(x + 3, ax.left + ax.width - 1), ax.y(min_fraction)),
                 (120, 120, 120), 1)
    prev = None
    for t, fraction, status in frames:
        if status != "ok" or fraction is None:
            cv2.line(img, (ax.x(t), ax.top + ax.height - 8), (ax.x(t), ax.top + ax.height - 1), (0, 0, 230), 1)
            prev = None
            continue
        point = (ax.x(t), ax.y(fraction))
        cv2.line(img, prev or point, point, (200, 90, 20), 1, cv2.LINE_AA)
        prev = point
    return img


# ---- files ------------------------------------------------------------------------------------

def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def data_uri(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.tile { margin: 0; width: 240px; background: #fff; border: 1px solid #ddd; }
.tile img { display: block; width: 240px; height: 180px; }
.tile figcaption { font-size: 12px; padding: 4px; overflow-wrap: anywhere; }
.strip { margin: 8px 0; }
.strip img { max-width: 100%; border: 1px solid #ddd; }
table.errors { border-collapse: collapse; font-size: 13px; }
table.errors td, table.errors th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
.note { color: #a40; }
"""


def tile_html(tile: Tile) -> str:
    name, detail = (html.escape(s) for s in caption_lines(tile.row))
    note = f'<br><span class="note">{html.escape(tile.note)}</span>' if tile.note else ""
    return (f'<figure class="tile" title="{html.escape(tile.row["uri"])}"><img alt="{name}" '
            f'src="{data_uri(tile.image)}"><figcaption><b>{name}</b><br>{detail}{note}</figcaption></figure>')


def errors_html(groups: list[dict], total: int) -> str:
    if not groups:
        return "<p>No error rows match.</p>"
    head = "<tr><th>id</th><th>rows</th><th>frames</th><th>error</th></tr>"
    body = ""
    for g in groups:
        frames = "" if g["first_frame"] is None else f"{g['first_frame']}-{g['last_frame']}"
        body += (f"<tr><td title=\"{html.escape(g['uri'] or '')}\">{html.escape(g['id'])}</td><td>{g['n']}</td>"
                 f"<td>{frames}</td><td>{html.escape(g['error'] or '')}</td></tr>")
    more = f"<p>First {len(groups)} groups shown.</p>" if len(groups) == MAX_ERROR_GROUPS else ""
    return f'<p>{total} error row(s).</p><table class="errors">{head}{body}</table>{more}'


def page_html(title: str, summary: str, tiles: list[Tile], strips: list[tuple[str, np.ndarray]],
              errors: str) -> str:
    tiles_part = "".join(tile_html(t) for t in tiles) or "<p>No ok rows match.</p>"
    strips_part = "".join(
        f'<figure class="strip"><img alt="person fraction of {html.escape(i)}" src="{data_uri(img)}">'
        f"<figcaption>{html.escape(i)}</figcaption></figure>" for i, img in strips) or "<p>No videos match.</p>"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
            f'<h2>Sample</h2><div class="grid">{tiles_part}</div>'
            f"<h2>Person fraction over time</h2><p>Line: person fraction of each processed frame; green: person "
            f"segments; dashed: presence threshold; red ticks: error frames.</p>{strips_part}"
            f"<h2>Errors</h2>{errors}</body></html>")


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
