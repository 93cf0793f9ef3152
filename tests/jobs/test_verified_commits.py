"""A committed shard whose Parquet file is gone or replaced: `status` calls it damaged, `retry` redoes it.

Real processes (the installed `humanseg-batch` entry point), local executor, tiny images.
"""
from __future__ import annotations

import json
from pathlib import Path

from clirun import cli
from mediagen import make_image, read_rows, write_manifest


def small_run(tmp_path: Path, weights: str, n: int = 6) -> tuple[Path, Path]:
    media = tmp_path / "media"
    rows = [{"uri": str(make_image(media / f"i{k}.png", 24, 32, k)), "id": f"i{k}"} for k in range(n)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    code, _, err = cli("run", manifest, "-o", out, "--weights", weights, "--executor", "local",
                       "--shard-size", "2", "--no-progress")
    assert code == 0, err
    return manifest, out


def ids(out: Path) -> list[str]:
    return [r["id"] for r in read_rows(out)]


def test_a_deleted_parquet_is_damaged_and_retry_restores_exactly_its_rows(tmp_path, tiny_weights):
    _, out = small_run(tmp_path, tiny_weights)
    before = read_rows(out)
    assert [r["id"] for r in before] == [f"i{k}" for k in range(6)]
    marker = json.loads(next((out / "_shards").glob("*.done.json")).read_text())
    parquet = out / marker["parquet"]["file"]
    assert marker["parquet"]["bytes"] == parquet.stat().st_size and marker["parquet"]["rows"] == 2
    lost = {r["id"] for r in before if r["shard"] == marker["shard"]}
    parquet.unlink()

    code, text, _ = cli("status", out, "--json")
    s = json.loads(text)
    assert code == 4
    assert list(s["damaged_shards"]) == [marker["shard"]] and "missing" in s["damaged_shards"][marker["shard"]]
    assert s["shards"]["committed"] == 2 and s["rows"]["ok"] == 4
    assert s["next"] == f"humanseg-batch retry {out}"
    code, text, _ = cli("status", out)
    assert code == 4 and f"damaged    {marker['shard']}" in text

    code, _, err = cli("retry", out, "--no-progress")
    assert code == 0, err
    assert "1 committed shard(s) are damaged" in err and "1 shard(s) committed" in err
    after = read_rows(out)
    assert ids(out) == [f"i{k}" for k in range(6)]          # exactly one row per item, the lost ones back
    restored = [r for r in after if r["id"] in lost]
    assert len(restored) == 2 and all(r["status"] == "ok" for r in restored)
    code, text, _ = cli("status", out, "--json")
    assert code == 0 and json.loads(text)["damaged_shards"] == {}


def test_a_truncated_or_replaced_parquet_is_damaged(tmp_path, tiny_weights):
    _, out = small_run(tmp_path, tiny_weights, n=4)
    first, second = sorted((out / "metadata").glob("*.parquet"))
    first.write_bytes(first.read_bytes()[:-10])                 # torn: size differs
    second.write_bytes(first.read_bytes() + b"")                # another file of a different size
    code, text, _ = cli("status", out, "--json")
    damaged = json.loads(text)["damaged_shards"]
    assert code == 4 and len(damaged) == 2 and all("bytes" in why for why in damaged.values())
    code, _, err = cli("run", tmp_path / "m.csv", "-o", out, "--weights", tiny_weights, "--executor", "local",
                       "--shard-size", "2", "--no-progress")     # a plain rerun checks listings only
    assert code == 0 and "damaged" not in err, err
    code, _, err = cli("retry", out, "--no-progress")           # retry compares sizes and repairs
    assert code == 0 and "2 committed shard(s) are damaged" in err, err
    assert ids(out) == ["i0", "i1", "i2", "i3"]
