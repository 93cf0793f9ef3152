"""Item errors stay item errors: an input that cannot be read (no credentials for its bucket, a device,
a FIFO) becomes that item's error row, and its shard's other items are processed. Real processes."""
from __future__ import annotations

import json
import os

from clirun import cli
from humanseg_batch.pipeline.write import MASKS_DIR, mask_key
from mediagen import make_image, read_rows, write_manifest

NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
                  "AWS_PROFILE": None, "AWS_EC2_METADATA_DISABLED": "true",
                  "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


def test_unreadable_inputs_are_error_rows_of_their_own(s3_bucket, tmp_path, tiny_weights):
    fs, bucket = s3_bucket
    media = tmp_path / "media"
    fs.put_file(str(make_image(media / "up.png", 24, 32, 9)), f"{bucket}/in/up.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)                  # reading it would block for ever
    rows = [{"uri": str(make_image(media / "i0.png", 24, 32, 0)), "id": "i0"},
            {"uri": f"s3://{bucket}/in/up.png", "id": "s3"},
            {"uri": str(make_image(media / "i1.png", 24, 32, 1)), "id": "i1"},
            {"uri": "/dev/zero", "id": "zero"}, {"uri": "/dev/urandom", "id": "urandom", "media_type": "image"},
            {"uri": str(fifo), "id": "fifo"}]
    manifest, out = write_manifest(tmp_path / "m.csv", rows), tmp_path / "out"
    code, _, err = cli("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local",
                       "--shard-size", "3", "--no-progress", env=NO_CREDENTIALS, timeout=240)
    assert code == 3, err
    got = {r["id"]: r for r in read_rows(out)}
    assert sorted(got) == sorted(r["id"] for r in rows)
    assert got["i0"]["status"] == got["i1"]["status"] == "ok"          # the s3 item's shard mates
    assert got["s3"]["status"] == "error" and f"no credentials for s3://{bucket}/in/up.png" in got["s3"]["error"]
    assert got["zero"]["error"] == "not a regular file (a character device): /dev/zero"
    assert got["urandom"]["error"] == "not a regular file (a character device): /dev/urandom"
    assert got["fifo"]["error"] == f"not a regular file (a FIFO): {fifo}"
    code, text, _ = cli("status", out, "--json")
    s = json.loads(text)
    assert code == 3 and s["shards"] == {"committed": 2, "failed": 0, "pending": 0}


def test_a_failure_record_that_no_longer_matches_the_manifest_is_cleared(tmp_path, tiny_weights):
    media = tmp_path / "media"
    rows = [{"uri": str(make_image(media / f"i{k}.png", 24, 32, k)), "id": f"i{k}"} for k in range(4)]
    manifest, out = write_manifest(tmp_path / "m.csv", rows), tmp_path / "out"
    (out / MASKS_DIR).mkdir(parents=True)
    (out / MASKS_DIR / mask_key("i3").split("/")[0]).write_text("a file where i3's mask folder must go")
    args = ["run", manifest, "-o", out, "--weights", tiny_weights, "--executor", "local", "--shard-size", "2",
            "--no-progress"]
    code, _, err = cli(*args)
    assert code == 4, err
    write_manifest(manifest, rows[:3])             # i3 leaves the manifest: its shard's record is void
    code, text, _ = cli("status", out, "--json")
    s = json.loads(text)
    assert code == 4 and s["shards"] == {"committed": 1, "failed": 0, "pending": 1}
    assert s["next"] == f"humanseg-batch retry {out}"
    code, _, err = cli("retry", out, "--no-progress")
    assert code == 0, err
    assert "cleared failure records" in err and "1 item(s) in 1 shard(s)" in err
    assert not list((out / "_shards").glob("*.failed.json"))
    code, text, _ = cli("status", out, "--json")
    assert code == 0 and json.loads(text)["next"].startswith("nothing")
    assert [r["id"] for r in read_rows(out)] == ["i0", "i1", "i2"]
