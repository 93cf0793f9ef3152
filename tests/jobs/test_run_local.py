import hashlib
import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from humanseg_batch.jobs.cli import cli
from humanseg_batch.model import load_checkpoint
from humanseg_batch.pipeline.write import mask_key, read_mask
from clirun import invoke as run_cli
from mediagen import decode_coco_rle, make_image, read_rows, write_manifest


def base_manifest(media, tmp_path, extra=()):
    rows = [{"uri": str(media[k]), "id": k, "camera": f"cam-{k}"} for k in ("a", "b", "c", "v1", "v2")]
    rows += [{"uri": str(tmp_path / "missing.png"), "id": "missing", "camera": "none"}, *extra]
    return write_manifest(tmp_path / "manifest.csv", rows)


def test_local_run_writes_one_row_per_image_and_frame(media, tmp_path, tiny_weights):
    manifest = base_manifest(media, tmp_path)
    out = tmp_path / "out"
    code, log = run_cli("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local",
                        "--shard-size", "2", "--video-chunk-seconds", "1", "--batch-size", "4", "--no-progress")
    assert code == 3, log          # finished, with one item error (the missing file)
    rows = read_rows(out)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert {k: len(v) for k, v in by_id.items()} == {"a": 1, "b": 1, "c": 1, "v1": 35, "v2": 24, "missing": 1}
    assert [r["frame_index"] for r in by_id["v1"]] == list(range(35))
    assert by_id["v1"][12]["timestamp_s"] == pytest.approx(1.2)
    assert by_id["missing"][0]["status"] == "error" and "not found" in by_id["missing"][0]["error"]
    assert by_id["c"][0]["camera"] == "cam-c" and (by_id["c"][0]["width"], by_id["c"][0]["height"]) == (77, 33)
    for r in rows:
        if r["status"] == "ok":
            mask = read_mask(r["mask_uri"], r["mask_frame"])
            assert mask.shape == (r["height"], r["width"]) and set(np.unique(mask)) <= {0, 255}
            assert r["person_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)
            assert Path(r["mask_uri"]).resolve().is_relative_to(out.resolve())
    assert len({r["shard"] for r in rows}) == 3
    assert len(list((out / "_shards").glob("*.done.json"))) == 3


def test_rerun_skips_committed_shards_and_incremental_run_adds_new_ones(media, tmp_path, tiny_weights):
    manifest = base_manifest(media, tmp_path)
    out = tmp_path / "out"
    args = ["-o", out, "--weights", tiny_weights, "--executor", "local", "--shard-size", "2", "--no-progress"]
    assert run_cli("run", manifest, *args)[0] == 3       # the missing file is an error row
    markers = {p.name: p.stat().st_mtime_ns for p in (out / "_shards").glob("*.done.json")}
    code, log = run_cli("run", manifest, *args)
    assert "0 item(s) in 0 shard(s)" in log and code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_shards").glob("*.done.json")} == markers
    new = make_image(tmp_path / "media" / "new.png", 30, 30, 9)
    base_manifest(media, tmp_path, extra=[{"uri": str(new), "id": "new", "camera": "x"}])
    code, log = run_cli("run", manifest, *args)
    assert "1 item(s) in 1 shard(s)" in log and code == 0    # the code is for the shards this run processed
    rows = read_rows(out)
    assert [r["id"] for r in rows].count("new") == 1 and len(rows) == 3 + 35 + 24 + 1 + 1


def test_appended_rows_never_regroup_and_an_output_without_a_plan_state_resumes_by_ids(media, tmp_path, tiny_weights):
    images = [make_image(tmp_path / "media" / f"i{k}.png", 20, 24, k) for k in range(7)]
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(p), "id": f"i{k}"} for k, p in enumerate(images[:5])])
    out = tmp_path / "out"
    args = ["-o", out, "--weights", tiny_weights, "--executor", "local", "--shard-size", "2", "--no-progress"]
    assert run_cli("run", manifest, *args)[0] == 0                  # shards i0-i1, i2-i3, i4 (short)
    first = {r["id"]: r["shard"] for r in read_rows(out)}
    rows = [{"uri": str(p), "id": f"i{k}"} for k, p in enumerate(images)] + [{"uri": str(images[0]), "id": "i0"}]
    write_manifest(tmp_path / "m.csv", rows)                       # two new rows and a duplicate of i0
    code, log = run_cli("run", manifest, *args)
    assert code == 0 and "2 item(s) in 1 shard(s)" in log and "1 row(s) with a duplicate id" in log, log
    after = {r["id"]: r["shard"] for r in read_rows(out)}
    assert {k: v for k, v in after.items() if k in first} == first      # i4 keeps its short shard
    assert after["i5"] == after["i6"] != first["i4"] and len(read_rows(out)) == 7
    assert [s["rows"] for s in json.loads((out / "_plan.json").read_text())["segments"]] == [5, 8]

    (out / "_plan.json").unlink()                                   # as an output of an older version
    for marker in (out / "_shards").glob("*.done.json"):
        if after["i5"] in marker.name:
            marker.unlink()                                          # i5-i6 not committed
    code, log = run_cli("run", manifest, *args)
    assert code == 0 and "planned by item ids" in log and "2 item(s) in 1 shard(s)" in log, log
    assert sorted(r["id"] for r in read_rows(out)) == [f"i{k}" for k in range(7)]
    assert json.loads((out / "_plan.json").read_text())["mode"] == "ids"


def test_a_manifest_edited_after_planning_stops_the_run_with_a_clear_error(media, tmp_path, tiny_weights):
    import subprocess
    import sys
    images = [make_image(tmp_path / "media" / f"e{k}.png", 20, 24, k) for k in range(4)]
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(p), "id": f"e{k}"} for k, p in enumerate(images)])
    cli_path = Path(sys.executable).parent / "humanseg-batch"
    proc = subprocess.Popen([str(cli_path), "run", str(manifest), "-o", str(tmp_path / "out"), "--weights", tiny_weights,
                             "--executor", "local", "--shard-size", "2", "--no-progress"],
                            env=dict(os.environ, HUMANSEG_FAULT_PAUSE="planned:3"), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:                     # planned: now the rows of the shards are read again
        if "paused at planned" in line:
            write_manifest(manifest, [{"uri": str(p), "id": f"x{k}"} for k, p in enumerate(images)])
            break
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 2 and "changed while the run was reading it" in err, err


def test_rerun_with_other_settings_is_refused_unless_overwrite(media, tmp_path, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media["a"])}])
    out = tmp_path / "out"
    common = ["-o", out, "--weights", tiny_weights, "--executor", "local", "--no-progress"]
    assert run_cli("run", manifest, *common)[0] == 0
    code, log = run_cli("run", manifest, *common, "--threshold", "0.7")
    assert code == 2 and "different settings" in log and "threshold" in log
    code, log = run_cli("run", manifest, *common, "--threshold", "0.7", "--overwrite")
    assert code == 0 and len(read_rows(out)) == 1


@pytest.mark.parametrize("bad_id", ["../../escape.png", "/etc/passwd", "..%2F..%2Fx", "a/../../../b", "..", "\\..\\x"])
def test_ids_and_uris_cannot_place_files_outside_out(media, tmp_path, tiny_weights, bad_id):
    key = mask_key(bad_id)
    assert ".." not in key.split("/") and not key.startswith("/") and key.count("/") == 1
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media["a"]), "id": bad_id}])
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert run_cli("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local", "--no-progress")[0] == 0
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert created and all(p.resolve().is_relative_to(out.resolve()) for p in created)


def test_mask_key_is_safe_for_nul_and_long_ids():
    for item_id in ["a\x00b", "x" * 5000, "ü/ß?*<>|", ""]:
        key = mask_key(item_id)
        assert "\x00" not in key and len(key) < 100 and ".." not in key


def test_bad_manifest_is_a_usage_error_without_traceback(tmp_path, tiny_weights):
    (tmp_path / "m.csv").write_text("path\n/a.png\n")
    code, log = run_cli("run", tmp_path / "m.csv", "-o", tmp_path / "out", "--weights", tiny_weights, "--executor", "local")
    assert code == 2 and "no 'uri' column" in log and "Traceback" not in log


def test_rle_column_matches_the_mask_files(media, tmp_path, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media[k]), "id": k} for k in ("a", "v2")])
    out = tmp_path / "out"
    code, log = run_cli("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local", "--no-progress",
                        "--rle", "--sample-every", "5")
    assert code == 0, log
    rows = read_rows(out)
    assert len(rows) == 1 + 5
    for r in rows:
        mask = read_mask(r["mask_uri"], r["mask_frame"])
        assert np.array_equal(decode_coco_rle(r["rle"], r["height"], r["width"]), mask)


def test_run_record_describes_the_run(media, tmp_path, tiny_weights):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media["a"])}])
    out = tmp_path / "out"
    code, log = run_cli("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local", "--no-progress",
                        "--threshold", "0.7")
    assert code == 0, log
    record = json.loads((out / "_run.json").read_text())
    assert record["config"]["weights_sha256"] == load_checkpoint(tiny_weights)[1]["sha256"]
    assert record["config"]["threshold"] == 0.7 and record["config"]["executor"] == "local"
    assert record["manifest_fingerprint"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert record["package_version"] == version("humanseg-batch")


def test_weights_by_shipped_name_and_a_clear_error_for_unknown_ones(media, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"uri": str(media["a"]), "id": "a"}])
    out = tmp_path / "out"
    code, log = run_cli("run", manifest, "-o", out, "--weights", "quality", "--executor", "local", "--no-progress")
    assert code == 0, log
    record = json.loads((out / "_run.json").read_text())
    quality = load_checkpoint("quality")[1]
    assert record["config"]["weights_sha256"] == quality["sha256"]
    assert read_rows(out)[0]["model"] == quality["config"].tag and quality["config"].tag.startswith("quality-")
    result = CliRunner().invoke(cli, ["run", str(manifest), "-o", str(tmp_path / "o2"), "--weights", "nosuch",
                                      "--executor", "local", "--no-progress"])
    assert result.exit_code == 2 and "shipped models: default, fast, quality" in result.output
    # submit refuses it before contacting any cluster (nothing listens on port 9)
    result = CliRunner().invoke(cli, ["submit", str(manifest), "-o", str(tmp_path / "o3"), "--weights", "hirs",
                                      "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "no shipped model named 'hirs'" in result.output
