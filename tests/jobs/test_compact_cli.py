"""`humanseg-batch compact` on a real run: status and query say the same before and after; a lost part,
`retry --errors` and more runs work on a compacted output."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from humanseg_batch.pipeline.lease import holding as holding_lease
from humanseg_batch.pipeline.ledger import Ledger
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import parquet_bytes
from clirun import invoke, status_json as status
from mediagen import make_image, make_video, write_manifest


def frames(out) -> list[dict]:
    code, text = invoke("query", out, "select * from frames", "--format", "json")
    assert code == 0, text
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return sorted(rows, key=lambda r: (r["id"], -1 if r["frame_index"] is None else r["frame_index"]))


def merged_bytes(out: Path) -> int:
    """The size of one part holding every shard file."""
    tables = [pq.read_table(p) for p in (out / "metadata").glob("*.parquet")]
    return len(parquet_bytes(pa.concat_tables(tables)))


def listing(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
            and p.name != "_run.json"}


def test_compact_then_status_query_lost_part_retry_errors_and_more_runs(tmp_path, tiny_weights):
    media = tmp_path / "media"
    rows = [{"uri": str(make_image(media / f"i{k}.png", 30, 40, k)), "id": f"i{k}"} for k in range(7)]
    rows.insert(3, {"uri": str(make_video(media / "v.avi", frames=12, fps=10)), "id": "v"})
    rows.append({"uri": str(media / "late.png"), "id": "late"})           # missing until the end
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    run = ["run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local", "--shard-size", "2",
           "--video-chunk-seconds", "1", "--no-progress"]
    code, log = invoke(*run)
    assert code == 3, log                                                  # 5 shards, one error row
    before_status, before_rows = status(out), frames(out)
    assert before_status[1]["shards"]["committed"] == 5 and before_status[1]["rows"]["error"] == 1

    target = merged_bytes(out) // 2
    code, log = invoke("compact", out, "--target-size", target)
    assert code == 0, log
    assert "summary: merged 5 shard file(s)" in log
    parts = Ledger(Storage(str(out))).parts
    assert len(parts) >= 2 and not list((out / "_shards").glob("*.done.json"))
    assert status(out) == before_status and frames(out) == before_rows
    files = listing(out)
    code, log = invoke("compact", out, "--target-size", target)
    assert code == 0 and "merged 0 shard file(s)" in log and listing(out) == files

    # a part is lost: status says so, and retry redoes exactly its shards
    lost, record = sorted(parts.items())[0]
    lost_shards = set(record.table.column("shard").to_pylist())
    (out / "metadata" / f"{lost}.parquet").unlink()
    code, s = status(out)
    assert code == 4 and set(s["damaged_shards"]) == lost_shards
    code, log = invoke("retry", out)
    assert code in (0, 3), log
    assert f"in {len(lost_shards)} shard(s) to process" in log and f"{5 - len(lost_shards)} shard(s) already" in log
    code, s = status(out)
    assert frames(out) == before_rows and (code, dict(s, runs=1)) == before_status    # a retry is a run

    # the missing file turns up: retry --errors takes its shard back from whichever file holds it
    make_image(media / "late.png", 30, 40, 8)
    code, log = invoke("retry", out, "--errors")
    assert code == 0 and "re-processing 1 shard(s) with error rows" in log, log
    after = frames(out)
    assert [r for r in after if r["id"] != "late"] == [r for r in before_rows if r["id"] != "late"]
    assert [r["status"] for r in after if r["id"] == "late"] == ["ok"]
    code, s = status(out)
    assert code == 0 and s["rows"] == {"ok": before_status[1]["rows"]["ok"] + 1, "error": 0}

    # the manifest grows: a run adds shard files, and compact merges them with the small parts
    rows += [{"uri": str(make_image(media / f"n{k}.png", 30, 40, 20 + k)), "id": f"n{k}"} for k in range(3)]
    write_manifest(manifest, rows)
    code, log = invoke(*run)
    assert code == 0, log
    grown = frames(out)
    code, log = invoke("compact", out, "--target-size", "1GB")
    assert code == 0 and "into 1 part(s)" in log, log
    assert frames(out) == grown and len(grown) == len(after) + 3
    assert len(Ledger(Storage(str(out))).parts) == 1 and status(out)[1]["shards"]["committed"] == 7


def test_compact_refuses_a_folder_without_a_run_a_bad_size_and_a_held_lease(tmp_path):
    (tmp_path / "empty").mkdir()
    code, log = invoke("compact", tmp_path / "empty")
    assert code == 2 and "no _run.json" in log
    code, log = invoke("compact", tmp_path / "empty", "--target-size", "lots")
    assert code == 2 and "not a size" in log
    with holding_lease(str(tmp_path / "empty"), None, "humanseg-batch run ...", log=lambda m: None):
        code, log = invoke("compact", tmp_path / "empty")
    assert code == 2 and "humanseg-batch run ..." in log, log      # names the writer that holds OUT


def test_run_compact_merges_what_the_run_committed(tmp_path, tiny_weights):
    media = tmp_path / "media"
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(make_image(media / f"c{k}.png", 30, 40, k)),
                                                    "id": f"c{k}"} for k in range(6)])
    out = tmp_path / "out"
    code, log = invoke("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local",
                       "--shard-size", "2", "--no-progress", "--compact")
    assert code == 0, log
    names = sorted(p.name for p in (out / "metadata").glob("*.parquet"))
    assert len(names) == 1 and names[0].startswith("part-"), names      # three shards, one part
    assert [r["id"] for r in frames(out)] == [f"c{k}" for k in range(6)]
    assert status(out)[1]["shards"] == {"committed": 3, "failed": 0, "pending": 0}
