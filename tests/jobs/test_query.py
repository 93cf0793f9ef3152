import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from humanseg_batch.jobs.cli import cli
from humanseg_batch.jobs.query import query
from humanseg_batch.pipeline.ledger import Ledger
from humanseg_batch.pipeline.plan import Item, Shard
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import parquet_bytes, rows_table, shard_parquet_path
from mediagen import make_image, make_video, write_manifest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "query-preview.md"


def run_query(*args):
    result = CliRunner().invoke(query, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def rows_of(out, sql, *extra):
    code, text = run_query(out, sql, "--format", "json", *extra)
    assert code == 0, text
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, tiny_weights):
    """A real local-executor run: three images, a 35-frame video, a missing file; plus a stray
    Parquet file without a marker, as an interrupted run leaves behind."""
    root = tmp_path_factory.mktemp("query_run")
    media = root / "media"
    rows = [{"uri": str(make_image(media / "a.png", 48, 64, 1)), "id": "a", "camera": "cam-a"},
            {"uri": str(make_image(media / "b.jpg", 60, 40, 2)), "id": "b", "camera": "cam-b"},
            {"uri": str(make_image(media / "sub dir" / "c é.png", 33, 77, 3)), "id": "c é", "camera": "cam-c"},
            {"uri": str(make_video(media / "v1.avi", frames=35, fps=10)), "id": "v1", "camera": "cam-v"},
            {"uri": str(media / "missing.png"), "id": "missing", "camera": "none"}]
    manifest = write_manifest(root / "manifest.csv", rows)
    out = root / "out"
    result = CliRunner().invoke(cli, ["run", str(manifest), "-o", str(out), "--weights", tiny_weights, "--executor",
                                      "local", "--shard-size", "2", "--video-chunk-seconds", "1", "--no-progress"])
    assert result.exit_code == 3, result.output
    committed = sorted((out / "metadata").glob("*.parquet"))
    (out / "metadata" / "shard-999999999-leftover.parquet").write_bytes(committed[0].read_bytes())
    return out


def committed_table(out):
    """Rows of the committed shards, read with pyarrow (independently of DuckDB)."""
    shards = [p.name[: -len(".done.json")] for p in (Path(out) / "_shards").glob("*.done.json")]
    tables = [pq.read_table(Path(out) / shard_parquet_path(s)) for s in shards]
    return [r for t in tables for r in t.to_pylist()]


def test_counts_and_items_match_pyarrow(run_out):
    rows = committed_table(run_out)
    assert rows_of(run_out, "select count(*) as n from frames") == [{"n": len(rows)}]
    by_id = defaultdict(list)
    for r in rows:
        by_id[r["id"]].append(r)
    items = {r["id"]: r for r in rows_of(run_out, "select * from items")}
    assert set(items) == {"a", "b", "c é", "v1", "missing"}
    for item_id, group in by_id.items():
        ok = [r for r in group if r["status"] == "ok"]
        item = items[item_id]
        assert item["n_frames"] == len(ok) and item["n_errors"] == len(group) - len(ok)
        assert item["camera"] == group[0]["camera"] and item["uri"] == group[0]["uri"]
        if ok:
            fractions = [r["person_fraction"] for r in ok]
            assert item["max_person_fraction"] == pytest.approx(max(fractions))
            assert item["mean_person_fraction"] == pytest.approx(sum(fractions) / len(fractions))
            assert item["n_person_frames"] == sum(f > 0.01 for f in fractions)
    assert items["v1"]["n_frames"] == 35 and items["v1"]["last_timestamp_s"] == pytest.approx(3.4)
    assert items["missing"]["status"] == "error" and "not found" in items["missing"]["error"]
    assert rows_of(run_out, "select id from videos") == [{"id": "v1"}]


def test_only_committed_shards_are_read(run_out):
    # the stray copy holds rows of ids a and b: DuckDB reading it would count them twice
    assert (run_out / "metadata" / "shard-999999999-leftover.parquet").exists()
    got = rows_of(run_out, "select id, count(*) as n from frames where id in ('a', 'b') group by id order by id")
    assert got == [{"id": "a", "n": 1}, {"id": "b", "n": 1}]


def test_formats_round_trip(run_out, tmp_path):
    sql = "select id, frame_index, person_fraction, bbox, status from frames order by id, frame_index"
    expected = sorted(committed_table(run_out), key=lambda r: (r["id"], -1 if r["frame_index"] is None
                                                                else r["frame_index"]))
    code, text = run_query(run_out, sql, "--format", "csv")
    assert code == 0
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [(r["id"], r["frame_index"], r["status"]) for r in parsed] == \
        [(r["id"], "" if r["frame_index"] is None else str(r["frame_index"]), r["status"]) for r in expected]
    assert [json.loads(r["bbox"]) if r["bbox"] else None for r in parsed] == [r["bbox"] for r in expected]
    assert [r["person_fraction"] for r in rows_of(run_out, sql)] == \
        pytest.approx([r["person_fraction"] for r in expected])
    target = tmp_path / "result.parquet"
    code, text = run_query(run_out, sql, "--format", "parquet", "--out", target)
    assert code == 0 and f"{len(expected)} row(s) written" in text
    table = pq.read_table(target).to_pylist()
    assert [(r["id"], r["frame_index"], r["bbox"]) for r in table] == \
        [(r["id"], r["frame_index"], r["bbox"]) for r in expected]
    code, text = run_query(run_out, sql, "--format", "json", "--out", tmp_path / "r.jsonl", "--limit", "3")
    assert code == 0 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


def test_table_format_is_aligned(run_out):
    code, text = run_query(run_out, "select id, n_frames from items order by id", "--limit", "2")
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["id", "n_frames"] and set(lines[1]) <= {"-", " "}
    assert [line.split()[0] for line in lines[2:]] == ["a", "b"]
    assert len({len(line) for line in lines[1:]}) == 1    # numbers right-aligned to the column's width


@pytest.mark.parametrize("sql, words", [("selec * from frames", "Parser Error"),
                                        ("select * from nope", "nope"),
                                        ("select no_such_column from frames", "no_such_column")])
def test_wrong_sql_is_one_clear_line_and_exit_2(run_out, sql, words):
    code, text = run_query(run_out, sql)
    assert code == 2 and "Traceback" not in text
    assert text.startswith("error: query failed:") and words in text and len(text.strip().splitlines()) == 1


def test_missing_or_empty_out_is_exit_2(tmp_path):
    code, text = run_query(tmp_path / "nope", "select 1")
    assert code == 2 and "does not exist" in text and "Traceback" not in text
    (tmp_path / "empty" / "metadata").mkdir(parents=True)
    code, text = run_query(tmp_path / "empty", "select * from frames")
    assert code == 2 and "no committed results" in text
    code, text = run_query(tmp_path / "empty", "select 1", "--format", "parquet")
    assert code == 2 and "--out" in text


# ---- an output folder whose rows we choose, so the answers are known exactly -------------------

def frame_row(item_id, shard, manifest_row, media_type="video", frame_index=None, t=None, fraction=0.0,
              status="ok", error=None, confidence=0.9):
    ok = status == "ok"
    return {"id": item_id, "uri": f"/archive/{item_id}", "media_type": media_type, "frame_index": frame_index,
            "timestamp_s": t, "width": 64, "height": 48, "mask_uri": f"/masks/{item_id}" if ok else None,
            "mask_frame": frame_index if ok and media_type == "video" else None,
            "person_fraction": fraction if ok else None, "bbox": [0, 0, 1, 1] if ok and fraction else None,
            "confidence": confidence if ok else None, "status": status, "error": error,
            "model": "m", "weights_sha256": "0" * 64, "shard": shard, "chunk": 0, "manifest_row": manifest_row}


CAM1 = {12: 0.4, 13: 0.4, 14: 0.5, 15: 0.4, 20: 0.2, 22: 0.3, 23: 0.3, 5: 0.005}   # frame -> fraction, 10 s apart
CAM2 = {15: 0.1, 20: 0.2, 25: 0.2, 30: 0.1}                                        # every 5th frame processed, 2 fps
PHOTOS = {"photo1.jpg": 0.5, "photo2.jpg": 0.2, "photo3.jpg": 0.35}


@pytest.fixture(scope="module")
def designed_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("designed") / "out"
    storage = Storage(str(out))
    cam1 = [frame_row("cam1.mp4", "shard-a", 0, frame_index=i, t=10.0 * i, fraction=CAM1.get(i, 0.0))
            for i in range(31) if i != 21]
    cam1.append(frame_row("cam1.mp4", "shard-a", 0, frame_index=21, t=210.0, status="error",
                          error="video decode stopped: corrupt packet"))
    cam2 = [frame_row("cam2.mp4", "shard-a", 1, frame_index=i, t=i / 2.5, fraction=CAM2.get(i, 0.0))
            for i in range(0, 60, 5)]
    photos = [frame_row(k, "shard-b", 2 + n, "image", fraction=f) for n, (k, f) in enumerate(PHOTOS.items())]
    photos += [frame_row(k, "shard-b", 5 + n, "image", status="error", error="file not found")
               for n, k in enumerate(["lost1.jpg", "lost2.jpg"])]
    ledger = Ledger(storage)
    shard = lambda name, ids: Shard(name, tuple(Item(k, i, i, "auto") for k, i in enumerate(ids)))  # noqa: E731
    ledger.commit(shard("shard-a", ["cam1.mp4", "cam2.mp4"]), cam1 + cam2, {})
    ledger.commit(shard("shard-b", [*PHOTOS, "lost1.jpg", "lost2.jpg"]), photos, {})
    return out


def expected_segments(frames: dict[int, float], indices, seconds, threshold=0.01):
    """Runs of consecutive processed frames above the threshold, by a plain loop."""
    segments, run = [], []
    for i in indices:
        if frames.get(i, 0.0) > threshold:
            run.append(i)
        elif run:
            segments.append(run)
            run = []
    if run:
        segments.append(run)
    return [(seconds(r[0]), seconds(r[-1]), r[0], r[-1], len(r)) for r in segments]


def test_person_segments_are_runs_of_processed_frames(designed_out):
    got = rows_of(designed_out, "select * from person_segments")
    cam1 = expected_segments(CAM1, range(31), lambda i: 10.0 * i)   # frame 21, an error, is in no run
    cam2 = expected_segments(CAM2, range(0, 60, 5), lambda i: i / 2.5)
    assert cam1 == [(120.0, 150.0, 12, 15, 4), (200.0, 200.0, 20, 20, 1), (220.0, 230.0, 22, 23, 2)]
    assert cam2 == [(6.0, 12.0, 15, 30, 4)]   # sampled frames 5 apart still count as consecutive
    assert [(r["start_s"], r["end_s"], r["start_frame"], r["end_frame"], r["n_frames"]) for r in got] == \
        cam1 + cam2    # exact: these timestamps are exact binary fractions
    assert [(r["id"], r["segment"]) for r in got] == [("cam1.mp4", 1), ("cam1.mp4", 2), ("cam1.mp4", 3),
                                                      ("cam2.mp4", 1)]
    # a lower threshold makes frame 5 (0.5 % person) a segment of its own
    low = rows_of(designed_out, "select start_frame from person_segments_at(0.001) where id = 'cam1.mp4'")
    assert [r["start_frame"] for r in low] == [5, 12, 20, 22]
    via_flag = rows_of(designed_out, "select count(*) as n from person_segments", "--min-person-fraction", "0.3")
    assert via_flag == [{"n": 2}]   # cam1 12-15 and 22-23


def test_videos_view_sums_person_time(designed_out):
    videos = {r["id"]: r for r in rows_of(designed_out, "select * from videos")}
    assert videos["cam1.mp4"]["n_segments"] == 3 and videos["cam1.mp4"]["person_s"] == pytest.approx(40.0)
    assert videos["cam1.mp4"]["status"] == "partial" and videos["cam1.mp4"]["n_errors"] == 1
    assert videos["cam1.mp4"]["first_person_s"] == 120.0 and videos["cam1.mp4"]["last_person_s"] == 230.0
    assert videos["cam2.mp4"]["person_s"] == pytest.approx(6.0)


def docs_sql(question: str) -> str:
    """The first ```sql block under the docs heading that contains `question`."""
    text = DOCS.read_text()
    found = re.search(r"^#+ [^\n]*" + re.escape(question) + r"[^\n]*\n(.*?)```sql\n(.*?)```", text, re.S | re.M)
    assert found, f"no SQL example for {question!r} in {DOCS}"
    return found.group(2)


@pytest.mark.parametrize("question, expected", [
    ("more than 30% person", [{"id": "photo1.jpg", "max_person_fraction": 0.5},
                              {"id": "photo3.jpg", "max_person_fraction": 0.35}]),
    ("between 02:00 and 03:00", [{"id": "cam1.mp4", "start_s": 120.0, "end_s": 150.0}]),
    ("Time ranges of people", [{"segment": 1, "start_s": 120.0, "end_s": 150.0},
                               {"segment": 2, "start_s": 200.0, "end_s": 200.0},
                               {"segment": 3, "start_s": 220.0, "end_s": 230.0}]),
    ("most common errors", [{"error": "file not found", "n": 2},
                            {"error": "video decode stopped: corrupt packet", "n": 1}]),
])
def test_documented_examples_answer_their_questions(designed_out, question, expected):
    got = rows_of(designed_out, docs_sql(question))
    assert [{k: r[k] for k in expected[0]} for r in got] == [pytest.approx(e) for e in expected]


@pytest.fixture(scope="module")
def long_person_out(tmp_path_factory):
    """Two 300-second videos sampled every 10 s: people for 100 s in cam3, for 30 s in cam4."""
    out = tmp_path_factory.mktemp("long") / "out"
    rows = [frame_row(k, "shard-c", n, frame_index=i, t=10.0 * i, fraction=0.3 if first <= i <= last else 0.0)
            for n, (k, first, last) in enumerate([("cam3.mp4", 0, 10), ("cam4.mp4", 5, 8)]) for i in range(31)]
    items = (Item(0, "cam3.mp4", "cam3.mp4", "auto"), Item(1, "cam4.mp4", "cam4.mp4", "auto"))
    Ledger(Storage(str(out))).commit(Shard("shard-c", items), rows, {})
    return out


def test_documented_example_on_long_person_time(long_person_out):
    got = rows_of(long_person_out, docs_sql("people for more than a minute"))
    assert got == [{"id": "cam3.mp4", "person_s": 100.0, "share_of_video": pytest.approx(0.333)}]


def test_query_reads_an_output_on_s3(run_out, s3_bucket, s3_server, tmp_path):
    fs, bucket = s3_bucket
    fs.put(str(run_out), f"{bucket}/runs/out", recursive=True)     # the stray uncommitted Parquet goes too
    remote = f"s3://{bucket}/runs/out"
    sql = "select id, n_frames, n_errors, max_person_fraction from items order by id"
    assert rows_of(remote, sql, "--endpoint-url", s3_server) == rows_of(run_out, sql)
    assert rows_of(remote, "select count(*) as n from frames") == [{"n": len(committed_table(run_out))}]
    code, text = run_query(remote, "select * from person_segments", "--format", "parquet",
                           "--out", f"{remote}/answers/segments.parquet")
    assert code == 0 and fs.exists(f"{bucket}/runs/out/answers/segments.parquet")
    code, text = run_query(f"s3://{bucket}/no/such/run", "select 1")
    assert code == 2 and "does not exist" in text and "Traceback" not in text
