"""Query results out: an aligned text table, CSV, JSON Lines or Parquet, to stdout or a file (local or s3://)."""
from __future__ import annotations

import csv
import io
import json
import math

import click
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from humanseg_batch.pipeline.storage import open_uri

TABLE_ROWS = 1000          # the aligned table stops here unless --limit says otherwise


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def format_table(names: list[str], rows: list[tuple]) -> str:
    """An aligned text table: numbers right-aligned, the rest left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(r[k], (int, float)) or r[k] is None for r in rows) for k in range(len(names))]
    widths = [max([len(n)] + [len(c[k]) for c in cells]) for k, n in enumerate(names)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out) + "\n"


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_csv(reader: pa.RecordBatchReader, stream) -> int:
    """CSV with a header; list and struct values as JSON; NULL as an empty field."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(reader.schema.names)
    n = 0
    for batch in reader:
        for row in batch.to_pylist():
            writer.writerow(["" if v is None else json.dumps(v, default=str) if isinstance(v, (list, dict))
                             else v for v in row.values()])
            n += 1
    return n


def write_json_lines(reader: pa.RecordBatchReader, stream) -> int:
    """JSON Lines: one object per row (`jq -s` makes an array)."""
    n = 0
    for batch in reader:
        for row in batch.to_pylist():
            stream.write(json.dumps({k: _json_value(v) for k, v in row.items()}, default=str,
                                    ensure_ascii=False) + "\n")
            n += 1
    return n


def write_parquet(reader: pa.RecordBatchReader, target: str, endpoint_url: str | None) -> int:
    n = 0
    with open_uri(target, endpoint_url, "wb") as f, pq.ParquetWriter(f, reader.schema, compression="zstd") as w:
        for batch in reader:
            w.write_batch(batch)
            n += batch.num_rows
    return n


def emit(rel: duckdb.DuckDBPyRelation, fmt: str, out_file: str | None, limit: int | None,
         endpoint_url: str | None) -> int:
    """Write a query result in a format to stdout or a file; return the number of rows written."""
    if fmt == "table":
        cap = limit if limit is not None else TABLE_ROWS
        rows = rel.limit(cap + 1).fetchall()
        text = format_table(rel.columns, rows[:cap])
        if len(rows) > cap and limit is None:
            text += f"(first {cap} rows shown; use --limit N or --format csv for more)\n"
        _write_text(text, out_file, endpoint_url)
        return min(len(rows), cap)
    reader = (rel.limit(limit) if limit is not None else rel).to_arrow_reader()
    if fmt == "parquet":
        return write_parquet(reader, out_file, endpoint_url)
    buf = io.StringIO()
    n = (write_csv if fmt == "csv" else write_json_lines)(reader, buf)
    _write_text(buf.getvalue(), out_file, endpoint_url)
    return n


def _write_text(text: str, out_file: str | None, endpoint_url: str | None) -> None:
    if out_file is None:
        click.echo(text, nl=False)
    else:
        with open_uri(out_file, endpoint_url, "wb") as f:
            f.write(text.encode())
