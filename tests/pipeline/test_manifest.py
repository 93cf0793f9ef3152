import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from humanseg_batch.pipeline.manifest import ManifestError, guess_media_type
from humanseg_batch.pipeline.planner import read_all


def read(path):
    items, extras, plan = read_all(str(path))
    return {k: [getattr(i, k) for i in items] for k in ("position", "uri", "id", "media_type", "error")}, extras, plan


def test_csv_manifest_carries_extra_columns_as_text_and_resolves_relative_paths(tmp_path):
    (tmp_path / "m.csv").write_text("uri,camera,score\nimgs/a.png,north,1\n/abs/b.mp4,south,2\ns3://bk/c,east,3\n")
    m, extras, _ = read(tmp_path / "m.csv")
    assert m["uri"] == [str(tmp_path / "imgs/a.png"), "/abs/b.mp4", "s3://bk/c"]
    assert m["id"] == ["imgs/a.png", "/abs/b.mp4", "s3://bk/c"]
    assert m["media_type"] == ["image", "video", "auto"]
    assert extras.column_names == ["camera", "score"]
    assert extras.schema.field("score").type == pa.string()


def test_parquet_and_jsonl_manifests(tmp_path):
    pq.write_table(pa.table({"uri": ["/x/a.jpg", "/x/b.mov"], "id": ["a", "b"], "n": [1, 2]}), tmp_path / "m.parquet")
    m, extras, _ = read(tmp_path / "m.parquet")
    assert m["id"] == ["a", "b"] and extras.column("n").to_pylist() == [1, 2]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"uri": u, "media_type": "video"}) for u in ["/a", "/b"]))
    m, _, _ = read(tmp_path / "m.jsonl")
    assert m["media_type"] == ["video", "video"]


@pytest.mark.parametrize("content,message", [
    ("", "empty"),
    ("   \n", "empty"),
    ("path,id\n/a.png,1\n", "no 'uri' column"),
    ("uri,id\n", "no rows"),
    ("uri,id\n/a.png,1,extra,more\n", "cannot parse"),
])
def test_malformed_manifests_give_clear_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read(tmp_path / "m.csv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read(tmp_path / "nope.csv")


def test_blank_uris_and_bad_media_types_are_row_errors_and_duplicates_kept_once(tmp_path):
    (tmp_path / "m.csv").write_text("uri,id,media_type\n/a.png,a,\n,blank,\n/c.png,c,sound\n/a2.png,a,\n/d.png,,\n")
    m, _, plan = read(tmp_path / "m.csv")
    assert m["id"] == ["a", "blank", "c", "/d.png"]
    errors = dict(zip(m["id"], m["error"]))
    assert errors["a"] == "" and "blank uri" in errors["blank"] and "unknown media_type" in errors["c"]
    assert plan.duplicate_ids == ["a"] and plan.duplicates.tolist() == [3]
    assert m["position"] == [0, 1, 2, 4]


def test_guess_media_type():
    assert guess_media_type("s3://b/x.JPG") == "image"
    assert guess_media_type("/v/clip.mp4?version=2") == "video"
    assert guess_media_type("/v.d/noext") == "auto"
