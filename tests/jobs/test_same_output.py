"""The local and the Ray executor write the same output: same files, same mask pixels, same rows.

Masks are compared by decoding them here (cv2 for PNG, PyAV for the 1-bit PNG video chunks), not through
`read_mask`, so a bug in the reader cannot hide a difference in what was written.
"""
import json
from pathlib import Path

import av
import cv2
import numpy as np

from humanseg_batch.jobs.cli import execute
from humanseg_batch.jobs.config import RunConfig
from mediagen import output_files, read_rows, write_manifest

# What may differ between two runs of the same work: wall-clock times in the shard markers and
# the run record. Every Parquet column is compared exactly (mask_uri relative to OUT).
MARKER_TIMINGS = {"committed_at", "decode_s", "model_wait_s", "write_s"}
RECORD_KEYS_THAT_DIFFER = {"created"}
SETTINGS_THAT_DIFFER = {"output", "executor", "decode_tasks"}      # what the two runs were told differently


def config(manifest, out, weights, **kw):
    base = dict(manifest=str(manifest), output=str(out), weights=weights, shard_size=2, video_chunk_seconds=1.0,
                batch_size=4, images_per_unit=2, progress=False, task_retries=1)
    return RunConfig(**{**base, **kw})


def video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="gray") for f in container.decode(video=0)]


def assert_same_masks(a: Path, b: Path, rel: str) -> None:
    if rel.endswith(".png"):
        x, y = (cv2.imread(str(p / rel), cv2.IMREAD_UNCHANGED) for p in (a, b))
        assert x is not None and x.dtype == np.uint8 and np.array_equal(x, y), rel
    elif rel.endswith(".mov"):
        x, y = video_frames(a / rel), video_frames(b / rel)
        assert x and len(x) == len(y), rel
        assert all(np.array_equal(f, g) for f, g in zip(x, y)), rel
    else:
        raise AssertionError(f"unexpected mask file {rel}")


def assert_same_output(a: Path, b: Path) -> int:
    """Everything a reader sees is identical; returns the number of mask files compared."""
    files = output_files(a)
    assert files == output_files(b)
    masks = sorted(f for f in files if f.startswith("masks/"))
    for rel in masks:
        assert_same_masks(a, b, rel)
    rows_a, rows_b = read_rows(a), read_rows(b)
    assert rows_a and len(rows_a) == len(rows_b)
    for x, y in zip(rows_a, rows_b):
        if x["mask_uri"] is not None:
            x["mask_uri"] = str(Path(x["mask_uri"]).relative_to(a))
            y["mask_uri"] = str(Path(y["mask_uri"]).relative_to(b))
        assert x == y
    for rel in (f for f in files if f.startswith("_shards/")):
        ma, mb = (json.loads((p / rel).read_text()) for p in (a, b))
        for m in (ma, mb):   # the Parquet holds absolute mask_uris of its own OUT: its rows are compared above
            m.get("parquet", {}).pop("bytes", None), m.get("parquet", {}).pop("sha256", None)
        assert {k: v for k, v in ma.items() if k not in MARKER_TIMINGS} == \
               {k: v for k, v in mb.items() if k not in MARKER_TIMINGS}, rel
    ra, rb = (json.loads((p / "_run.json").read_text()) for p in (a, b))
    for r in (ra, rb):
        r["config"] = {k: v for k, v in r["config"].items() if k not in SETTINGS_THAT_DIFFER}
    assert {k: v for k, v in ra.items() if k not in RECORD_KEYS_THAT_DIFFER} == \
           {k: v for k, v in rb.items() if k not in RECORD_KEYS_THAT_DIFFER}
    return len(masks)


def test_ray_and_local_executors_write_the_same_bytes(ray_local, media, tmp_path, busy_weights):
    weights = busy_weights          # masks with edges: a plain random model marks every pixel person
    rows = [{"uri": str(media[k]), "id": k, "tag": k.upper()} for k in ("a", "b", "c", "v1", "v2")]
    rows.append({"uri": str(tmp_path / "missing.png"), "id": "missing"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert execute(config(manifest, local, weights, executor="local")) == 3
    # three units in flight: the model actor may merge their requests into other batches than local's
    assert execute(config(manifest, remote, weights, executor="ray", decode_tasks=3)) == 3
    # 3 image PNGs; v1 (35 frames at 10 fps) and v2 (24 at 8 fps) in 1-second chunks: 4 + 3 mask videos
    assert assert_same_output(local, remote) == 3 + 4 + 3
    got = read_rows(remote)
    assert len(got) == 3 + 35 + 24 + 1
    # the masks vary with the content, so equal masks are not equal by construction
    fractions = sorted(r["person_fraction"] for r in got if r["status"] == "ok")
    assert len(set(fractions)) > 10
