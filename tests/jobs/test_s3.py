"""S3 paths against moto's S3-compatible HTTP server on 127.0.0.1: inputs, outputs, resume, status."""
import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from humanseg_batch.pipeline.write import read_mask
from clirun import invoke
from mediagen import write_manifest


def upload_media(fs, bucket, media, tmp_path):
    for k in ("a", "b", "v2"):
        fs.put_file(str(media[k]), f"{bucket}/in/{media[k].name}")
    rows = [{"uri": f"s3://{bucket}/in/{media[k].name}", "id": k, "site": "s3"} for k in ("a", "b", "v2")]
    rows.append({"uri": "media/local-relative-missing.png", "id": "rel"})   # relative to the S3 manifest
    manifest = write_manifest(tmp_path / "m.csv", rows)
    fs.put_file(str(manifest), f"{bucket}/manifest.csv")
    return f"s3://{bucket}/manifest.csv"


def s3_rows(fs, out):
    files = [f for f in fs.find(out.replace("s3://", "") + "/metadata") if f.endswith(".parquet")]
    return ds.dataset(files, filesystem=fs, format="parquet").to_table().to_pylist()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_manifest_media_masks_and_parquet_on_s3(s3_bucket, media, tmp_path, tiny_weights, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_local")
    fs, bucket = s3_bucket
    manifest = upload_media(fs, bucket, media, tmp_path)
    out = f"s3://{bucket}/out"
    code, log = invoke("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", executor,
                       "--shard-size", "2", "--video-chunk-seconds", "1", "--no-progress")
    assert code == 3, log                       # the relative, missing file is an error row
    rows = s3_rows(fs, out)
    assert len(rows) == 2 + 24 + 1
    errors = [r for r in rows if r["status"] == "error"]
    assert [r["id"] for r in errors] == ["rel"] and f"s3://{bucket}/media/" in errors[0]["uri"]
    for r in rows:
        if r["status"] == "ok":
            assert r["mask_uri"].startswith(out + "/masks/") and r["site"] == "s3"
            assert read_mask(r["mask_uri"], r["mask_frame"]).shape == (r["height"], r["width"])
    record = fs.cat_file(f"{bucket}/out/_run.json").decode()
    assert "testing" not in record          # credentials are never written

    # resume: nothing is recomputed, status reads S3
    markers = {f: fs.info(f)["LastModified"] for f in fs.find(f"{bucket}/out/_shards")}
    code, log = invoke("run", manifest, "-o", out, "--weights", tiny_weights, "--executor", executor, "--no-progress",
                       "--shard-size", "2", "--video-chunk-seconds", "1")
    assert "0 item(s) in 0 shard(s)" in log and code == 0
    fs.invalidate_cache()
    assert {f: fs.info(f)["LastModified"] for f in fs.find(f"{bucket}/out/_shards")} == markers
    code, log = invoke("status", out, "--json")
    status = json.loads(log)
    assert status["shards"] == {"committed": 2, "failed": 0, "pending": 0}
    assert status["rows"] == {"ok": 26, "error": 1} and code == 3
    if executor == "local":     # as a process: its exit code is the answer's, never an abort at shutdown
        import os
        import subprocess
        import sys
        cli_path = os.path.join(os.path.dirname(sys.executable), "humanseg-batch")
        codes = [subprocess.run([cli_path, "status", out], capture_output=True, timeout=120).returncode
                 for _ in range(6)]
        assert codes == [3] * 6, codes     # a pyarrow scan over s3fs aborted (134) in 4 of 8 runs


def test_resume_on_s3_after_an_uncommitted_shard(s3_bucket, media, tmp_path, tiny_weights):
    fs, bucket = s3_bucket
    manifest = upload_media(fs, bucket, media, tmp_path)
    out = f"s3://{bucket}/out2"
    args = ["-o", out, "--weights", tiny_weights, "--executor", "local", "--shard-size", "1", "--no-progress"]
    assert invoke("run", manifest, *args)[0] == 3             # the relative, missing file is an error row
    # simulate a crash between the Parquet write and the marker of one shard
    marker = sorted(fs.find(f"{bucket}/out2/_shards"))[0]
    redone = json.loads(fs.cat_file(marker))["ids"]
    fs.rm(marker)
    code, log = invoke("run", manifest, *args)
    assert "removed 1 uncommitted shard file" in log and "1 item(s) in 1 shard(s)" in log
    assert code == (3 if "rel" in redone else 0), log
    rows = s3_rows(fs, out)
    keys = [(r["id"], r["frame_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 + 24 + 1
