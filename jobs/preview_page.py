"""The preview's text: tile captions and the HTML page, self-contained (every picture inlined as a
data: URI, no script)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import cv2
import numpy as np

MAX_ERROR_GROUPS = 500


@dataclass
class Tile:
    row: dict
    image: np.ndarray          # TILE_H x TILE_W x 3, BGR
    note: str = ""             # why the source is missing, if it is


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
