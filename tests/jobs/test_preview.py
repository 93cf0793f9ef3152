import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from humanseg_batch.jobs.cli import cli
from humanseg_batch.jobs.preview import BOX_BGR, CAPTION_H, GAP, OUTLINE_BGR, TILE_H, TILE_W, overlay, preview
from mediagen import make_image, make_video, write_manifest


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_weights):
    """A real local-executor run over two photos, two videos and an unreadable file."""
    root = tmp_path_factory.mktemp("preview_run")
    media = root / "media"
    (media / "broken.jpg").parent.mkdir(parents=True)
    (media / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    uris = [make_image(media / "p1.png", 90, 120, 5), make_image(media / "p2 é.jpg", 100, 70, 6),
            make_video(media / "v1.avi", frames=30, fps=10), make_video(media / "v2.mkv", frames=16, fps=8),
            media / "broken.jpg"]
    manifest = write_manifest(root / "m.csv", [{"uri": str(u)} for u in uris])
    target = root / "out"
    result = CliRunner().invoke(cli, ["run", str(manifest), "-o", str(target), "--weights", tiny_weights,
                                      "--executor", "local", "--shard-size", "3", "--no-progress"])
    assert result.exit_code == 3, result.output
    return target


def run_preview(*args):
    result = CliRunner().invoke(preview, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def tiles_in(page: str) -> int:
    return page.count('class="tile"')


def expected_sheet_shape(n_tiles: int, columns: int) -> tuple[int, int, int]:
    cols = min(n_tiles, columns)
    rows = -(-n_tiles // cols)
    return rows * (TILE_H + CAPTION_H) + (rows + 1) * GAP, cols * TILE_W + (cols + 1) * GAP, 3


def test_contact_sheet_and_page(out, tmp_path):
    code, text = run_preview(out, "--limit", "5", "--columns", "3", "--out", tmp_path / "p")
    assert code == 0, text
    paths = [Path(p) for p in text.split()]
    sheet_path, page_path, strips = paths[0], paths[1], paths[2:]
    assert sheet_path.name == "contact_sheet.png" and page_path.name == "index.html"
    sheet = cv2.imread(str(sheet_path))
    assert sheet is not None and sheet.shape == expected_sheet_shape(5, 3)
    page = page_path.read_text()
    assert tiles_in(page) == 5 and "source unavailable" not in page
    # self-contained: every picture is a data URI, nothing is fetched
    assert re.findall(r'src="([a-z]+):', page) == ["data"] * (5 + len(strips))
    assert "<link" not in page and "<script" not in page
    assert len(strips) == 2 and all(cv2.imread(str(p)).shape[:2] == (150, 900) for p in strips)
    assert "broken.jpg" in page and "not a decodable image" in page   # the error row, with its message


def test_sample_spreads_over_items_and_follows_the_seed(out, tmp_path):
    def tile_ids(seed):
        code, text = run_preview(out, "--limit", "4", "--seed", seed, "--out", tmp_path / str(seed))
        assert code == 0, text
        page = Path(text.split()[1]).read_text()
        return re.findall(r'<figcaption><b>([^<]*)</b><br>([^<]*)<', page)

    first = tile_ids(1)
    # one tile per item before any gets a second
    assert sorted(Path(i).name for i, _ in first) == ["p1.png", "p2 é.jpg", "v1.avi", "v2.mkv"]
    assert tile_ids(1) == first
    assert any(tile_ids(seed) != first for seed in (2, 3, 4))              # another seed, other video frames


def test_where_filters_tiles_errors_and_plots(out, tmp_path):
    rows = ds.dataset(str(out / "metadata")).to_table().to_pylist()
    ok_video = [r for r in rows if r["status"] == "ok" and r["media_type"] == "video"]
    code, text = run_preview(out, "--where", "media_type = 'video' and frame_index < 3", "--limit", "50",
                             "--out", tmp_path / "v")
    page = Path(text.split()[1]).read_text()
    assert code == 0 and tiles_in(page) == sum(r["frame_index"] < 3 for r in ok_video) == 6
    assert "No error rows match" in page and len(text.split()) == 4       # two strips
    cutoff = sorted(r["confidence"] for r in ok_video)[len(ok_video) // 2]
    code, text = run_preview(out, "--where", f"confidence < {cutoff!r}", "--limit", "100", "--out", tmp_path / "c")
    page = Path(text.split()[1]).read_text()
    assert tiles_in(page) == sum(r["status"] == "ok" and r["confidence"] < cutoff for r in rows)
    code, text = run_preview(out, "--where", "status = 'error'", "--out", tmp_path / "e")
    page = Path(text.split()[1]).read_text()
    assert code == 0 and tiles_in(page) == 0 and "not a decodable image" in page
    assert cv2.imread(text.split()[0]).shape == expected_sheet_shape(1, 6)   # one "no matching rows" tile


def test_bad_where_and_missing_out_exit_2(out, tmp_path):
    code, text = run_preview(out, "--where", "no_such_column > 1", "--out", tmp_path / "x")
    assert code == 2 and "no_such_column" in text and "Traceback" not in text and len(text.splitlines()) == 1
    code, text = run_preview(tmp_path / "nothing", "--out", tmp_path / "y")
    assert code == 2 and "does not exist" in text
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_overlay_tints_and_outlines_only_the_mask():
    source = np.full((90, 120, 3), 100, np.uint8)
    mask = np.zeros((90, 120), np.uint8)
    mask[20:70, 10:50] = 255
    tile = overlay(source, mask, None).astype(int)
    assert tile.shape == (TILE_H, TILE_W, 3)          # 120x90 scaled by 2 fills the tile exactly
    inside, outside = tile[90, 60], tile[90, 180]
    assert (outside == 100).all() and not (inside == 100).all()
    assert inside[0] > 100 and inside[1] < 100         # magenta-ish: more blue and red, less green (BGR)
    assert (tile[40:140, 20] == OUTLINE_BGR).all() and (tile[40:140, 19] == 100).all()   # outline on the border
    boxed = overlay(source, mask, (10, 20, 50, 70))
    assert (boxed[40:140, 20] == BOX_BGR).all() and (boxed[139, 20:100] == BOX_BGR).all()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# .ci/run installs chromium, so in CI (CI=true) a missing browser fails the test instead of skipping it
@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_page_renders_in_a_headless_browser(out, tmp_path):
    assert chromium(), "chromium is missing; .ci/run installs it"
    code, text = run_preview(out, "--limit", "7", "--out", tmp_path / "p")
    assert code == 0, text
    page = Path(text.split()[1]).resolve()
    shot = tmp_path / "shot.png"
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 100     # not a blank page
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count('class="tile"') == 7 and dom.count("<img") == 7 + 2      # tiles and two plots
