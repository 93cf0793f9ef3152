"""An output is readable by any client as is: one Parquet schema across incremental runs (pyarrow,
pandas, polars and DuckDB read OUT/metadata whole and agree), and a mask_uri that resolves from anywhere."""
from __future__ import annotations

import json

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from clirun import cli
from humanseg_batch.pipeline.write import read_mask
from mediagen import make_image, write_manifest


def test_incremental_run_with_a_new_manifest_column_keeps_one_schema(tmp_path, tiny_weights):
    media = tmp_path / "media"
    rows = [{"uri": str(make_image(media / f"i{k}.png", 24, 32, k)), "id": f"i{k}", "site": k} for k in range(3)]
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows)
    args = ["run", manifest, "-o", "out", "--weights", tiny_weights, "--executor", "local", "--shard-size", "2",
            "--no-progress"]
    code, _, err = cli(*args, cwd=tmp_path)           # a relative -o
    assert code == 0, err

    rows += [{"uri": str(make_image(media / f"n{k}.png", 24, 32, 10 + k)), "id": f"n{k}", "site": 10 + k,
              "camera": f"cam{k}"} for k in range(3)]
    write_manifest(manifest, rows)
    code, _, err = cli(*args, cwd=tmp_path)
    assert code == 0, err
    assert "manifest column(s) camera are new since the first run" in err

    out = tmp_path / "out"
    files = sorted((out / "metadata").glob("*.parquet"))
    assert len(files) == 4 and len({pq.read_schema(f) for f in files}) == 1
    assert "camera" not in pq.read_schema(files[0]).names
    counts = {
        "pyarrow": ds.dataset(str(out / "metadata"), format="parquet").count_rows(),
        "pandas": len(pd.read_parquet(out / "metadata")),
        "polars": pl.scan_parquet(str(out / "metadata" / "*.parquet")).select(pl.len()).collect().item(),
        "duckdb": duckdb.sql(f"select count(*) from read_parquet('{out}/metadata/*.parquet')").fetchall()[0][0],
    }
    code, text, _ = cli("status", out, "--json")
    s = json.loads(text)
    assert set(counts.values()) == {6} and s["rows"]["ok"] + s["rows"]["error"] == 6, counts
    sites = sorted(pd.read_parquet(out / "metadata")["site"].tolist())
    assert sites == ["0", "1", "10", "11", "12", "2"]       # CSV columns are text

    # mask_uri is absolute: it opens from another folder than the run's
    table = ds.dataset(str(out / "metadata"), format="parquet").to_table(columns=["mask_uri", "height", "width"])
    for r in table.to_pylist():
        assert r["mask_uri"].startswith(str(out) + "/masks/")
        assert read_mask(r["mask_uri"]).shape == (r["height"], r["width"])

