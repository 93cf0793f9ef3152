"""`status` and `retry` on a run with an induced shard failure, a pending shard and an error row.

The failure: part of OUT is made unwritable by putting a plain file where one item's mask
folder must go (chmod would not stop root), so that item's shard fails while the others commit.
"""
from clirun import invoke, status_json as status
from humanseg_batch.pipeline.write import MASKS_DIR, mask_key
from mediagen import make_image, make_video, read_rows, write_manifest


def test_status_and_retry_after_a_failed_shard_and_error_rows(tmp_path, tiny_weights):
    media = tmp_path / "media"
    rows = [{"uri": str(make_image(media / f"i{k}.png", 30, 40, k)), "id": f"i{k}"} for k in range(5)]
    rows.insert(2, {"uri": str(make_video(media / "v.avi", frames=12, fps=10)), "id": "v"})
    rows.append({"uri": str(media / "late.png"), "id": "late"})            # missing until the end
    manifest = write_manifest(tmp_path / "m.csv", rows)
    # shards of 2: [i0 i1] [v i2] [i3 i4] [late]; block the mask folder of i3
    prefixes = {r["id"]: mask_key(r["id"]).split("/")[0] for r in rows}
    victim = prefixes["i3"]
    assert list(prefixes.values()).count(victim) == 1
    out = tmp_path / "out"
    (out / MASKS_DIR).mkdir(parents=True)
    (out / MASKS_DIR / victim).write_text("not a folder")

    code, log = invoke("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local",
                       "--shard-size", "2", "--video-chunk-seconds", "1", "--no-progress")
    assert code == 4, log
    assert f"humanseg-batch retry {out}" in log

    code, s = status(out)
    assert code == 4
    assert s["shards"] == {"committed": 3, "failed": 1, "pending": 0}
    assert s["rows"] == {"ok": 2 + 12 + 1, "error": 1} and s["frames"] == 12 and s["items_committed"] == 5
    (reason,) = s["failed_shards"].values()
    assert "Error" in reason and victim in reason and "\n" not in reason
    assert [e["rows"] for e in s["common_errors"]] == [1] and "file not found" in s["common_errors"][0]["error"]
    assert s["next"] == f"humanseg-batch retry {out}"

    code, text = invoke("status", out)
    assert code == 4
    assert "3 committed, 1 failed, 0 pending" in text and "15 ok, 1 error" in text
    assert "failed     shard-" in text and "file not found" in text
    assert text.rstrip().endswith(f"next       humanseg-batch retry {out}")

    # the manifest gains a row: one more pending shard
    rows.append({"uri": str(make_image(media / "new.png", 30, 40, 9)), "id": "new"})
    write_manifest(manifest, rows)
    assert status(out)[1]["shards"] == {"committed": 3, "failed": 1, "pending": 1}

    # the output is writable again: retry (no options repeated) does the failed and the pending shards
    (out / MASKS_DIR / victim).unlink()
    code, log = invoke("retry", out)
    assert code == 0, log          # exit codes speak of this invocation's items (as for any rerun)
    assert "3 item(s) in 2 shard(s)" in log and "3 shard(s) already committed" in log   # the recorded shard size
    assert "0 failed" in log
    code, s = status(out)
    assert code == 3
    assert s["shards"] == {"committed": 5, "failed": 0, "pending": 0} and s["failed_shards"] == {}
    assert s["rows"] == {"ok": 18, "error": 1}
    assert s["next"].startswith(f"humanseg-batch retry {out} --errors")
    assert not list((out / "_shards").glob("*.failed.json"))

    # the missing file turns up: retry --errors redoes only its shard and replaces the error row
    done = {p.name: p.stat().st_mtime_ns for p in (out / "_shards").glob("*.done.json")}
    make_image(media / "late.png", 30, 40, 8)
    code, log = invoke("retry", out, "--errors")
    assert code == 0, log
    assert "re-processing 1 shard(s) with error rows" in log
    after = {p.name: p.stat().st_mtime_ns for p in (out / "_shards").glob("*.done.json")}
    assert after.keys() == done.keys() and sum(after[k] != done[k] for k in done) == 1
    got = read_rows(out)
    keys = [(r["id"], r["frame_index"]) for r in got]
    assert len(keys) == len(set(keys)) == 5 + 12 + 2
    assert all(r["status"] == "ok" for r in got)
    code, s = status(out)
    assert code == 0 and s["rows"] == {"ok": 19, "error": 0} and s["next"].startswith("nothing")

    # nothing left to do: retry is a no-op that succeeds
    code, log = invoke("retry", out)
    assert code == 0 and "0 item(s) in 0 shard(s)" in log


def test_status_and_retry_of_a_folder_without_a_run_are_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    for command in ("status", "retry"):
        code, log = invoke(command, tmp_path / "empty")
        assert code == 2 and "no _run.json" in log, log
    code, log = invoke("retry")
    assert code == 2 and "Missing argument" in log
