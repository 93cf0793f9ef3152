"""Storage on a local folder and on a real S3-compatible server (moto's server mode)."""
from __future__ import annotations

import pytest

from humanseg_batch.pipeline.storage import Storage, read_uri


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "out") + "/")
    _, bucket = request.getfixturevalue("s3_bucket")
    return Storage(f"s3://{bucket}/runs/out")


def test_write_read_list_and_remove(storage):
    storage.write_bytes("metadata/a.parquet", b"one")
    storage.write_bytes("metadata/b.parquet", b"two")
    storage.write_bytes("metadata/a.parquet", b"one again")     # replaced whole
    assert storage.list("metadata") == ["a.parquet", "b.parquet"]      # no temp files left behind
    assert storage.read_bytes("metadata/a.parquet") == b"one again"
    assert storage.read_many(["metadata/a.parquet", "metadata/b.parquet", "metadata/none"]) == {
        "metadata/a.parquet": b"one again", "metadata/b.parquet": b"two"}
    assert read_uri(storage.uri("metadata/b.parquet")) == b"two"
    storage.remove("metadata/a.parquet")
    storage.remove("metadata/never-there")                     # removing what is gone is no error
    assert not storage.exists("metadata/a.parquet") and storage.exists("metadata/b.parquet")
    assert storage.list("nothing-here") == []


def test_the_root_is_normalised_and_uris_point_into_it(storage):
    assert not storage.root.endswith("/")
    assert storage.uri("masks/x.png") == f"{storage.root}/masks/x.png"
