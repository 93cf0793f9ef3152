"""`humanseg-batch query OUT "SQL"`: DuckDB over the committed output Parquet.

Only committed shards are read: the file list comes from the ledger, never from a glob, so a
Parquet file left by an interrupted run is invisible.
Views (see docs/query-preview.md): `frames`, `items`, `videos`, `person_segments`, and the
table macro `person_segments_at(min_fraction)`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import click
import duckdb

from humanseg_batch.pipeline.ledger import Ledger
from humanseg_batch.pipeline.storage import Storage
from humanseg_batch.pipeline.write import ROW_SCHEMA

from .formats import TABLE_ROWS, emit
from .runner import EXIT_USAGE

DEFAULT_MIN_PERSON = 0.01

# A processed frame "shows a person" when person_fraction > min_fraction. Error frames break a
# segment (nothing is known about them); frames skipped by sampling do not (they were never rows).
SEGMENTS_MACRO = """
CREATE MACRO person_segments_at(min_fraction := {default}) AS TABLE
WITH ordered AS (
    SELECT id, uri, frame_index, timestamp_s, person_fraction,
           status = 'ok' AND person_fraction > CAST(min_fraction AS DOUBLE) AS person,
           row_number() OVER (PARTITION BY id ORDER BY frame_index) AS n_all
    FROM frames WHERE media_type = 'video' AND frame_index IS NOT NULL
), islands AS (
    SELECT *, n_all - row_number() OVER (PARTITION BY id ORDER BY frame_index) AS island
    FROM ordered WHERE person
)
SELECT id, any_value(uri) AS uri,
       row_number() OVER (PARTITION BY id ORDER BY min(frame_index)) AS segment,
       min(timestamp_s) AS start_s, max(timestamp_s) AS end_s, max(timestamp_s) - min(timestamp_s) AS duration_s,
       min(frame_index) AS start_frame, max(frame_index) AS end_frame, count(*) AS n_frames,
       max(person_fraction) AS max_person_fraction, avg(person_fraction) AS mean_person_fraction
FROM islands GROUP BY id, island ORDER BY id, start_frame
"""

ITEMS_VIEW = """
CREATE VIEW items AS
SELECT id, any_value(uri) AS uri, any_value(media_type) AS media_type,
       CASE WHEN bool_and(status = 'ok') THEN 'ok' WHEN bool_or(status = 'ok') THEN 'partial' ELSE 'error' END
           AS status,
       min(error) AS error,
       count(*) FILTER (WHERE status = 'ok') AS n_frames,
       count(*) FILTER (WHERE status = 'error') AS n_errors,
       count(*) FILTER (WHERE status = 'ok' AND person_fraction > {min}) AS n_person_frames,
       max(person_fraction) AS max_person_fraction, avg(person_fraction) AS mean_person_fraction,
       min(confidence) AS min_confidence, avg(confidence) AS mean_confidence,
       min(timestamp_s) FILTER (WHERE status = 'ok' AND person_fraction > {min}) AS first_person_s,
       max(timestamp_s) FILTER (WHERE status = 'ok' AND person_fraction > {min}) AS last_person_s,
       max(timestamp_s) AS last_timestamp_s,
       any_value(width) AS width, any_value(height) AS height,
       any_value(shard) AS shard, min(manifest_row) AS manifest_row{extras}
FROM frames GROUP BY id ORDER BY min(manifest_row), id
"""

VIDEOS_VIEW = """
CREATE VIEW videos AS
SELECT i.* EXCLUDE (media_type), coalesce(s.n_segments, 0) AS n_segments,
       coalesce(s.person_s, 0.0) AS person_s
FROM items i
LEFT JOIN (SELECT id, count(*) AS n_segments, sum(duration_s) AS person_s FROM person_segments GROUP BY id) s
    USING (id)
WHERE i.media_type = 'video'
"""


class OutputError(Exception):
    """OUT is missing, unreadable or holds no committed results."""


@dataclass
class Output:
    """A DuckDB connection with the views over one output folder's committed Parquet."""

    con: duckdb.DuckDBPyConnection
    storage: Storage
    files: list[str]


def committed_files(storage: Storage) -> list[str]:
    """Paths (as DuckDB should read them) of the Parquet files of committed shards."""
    try:
        if not storage.fs.exists(storage.path):
            raise OutputError(f"{storage.root} does not exist")
        files, missing = Ledger(storage).committed_files()
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage failure (credentials, endpoint) is a user-facing error
        raise OutputError(f"cannot read {storage.root}: {exc}") from None
    if not files and not missing:
        raise OutputError(f"{storage.root} holds no committed results (no committed shard); "
                          "is it a humanseg-batch output folder, and has a run finished a shard?")
    if missing:
        click.echo(f"warning: {len(missing)} committed shard(s) have no Parquet file, skipped: "
                   f"{', '.join(missing[:5])}", err=True)
    if not files:
        raise OutputError(f"{storage.root} has shard markers but none of their Parquet files")
    paths = [storage.full(f) for f in files]
    return paths if storage.local else [storage.fs.unstrip_protocol(p) for p in paths]


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_output(out: str, endpoint_url: str | None = None,
                min_person_fraction: float = DEFAULT_MIN_PERSON) -> Output:
    """Connect DuckDB to OUT's committed Parquet and create the views. Raises OutputError."""
    try:
        storage = Storage(out, endpoint_url)
    except (ValueError, ImportError) as exc:
        raise OutputError(f"cannot open {out}: {exc}") from None
    files = committed_files(storage)
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")  # no network: never try to download one
    if not storage.local:
        con.register_filesystem(storage.fs)
    listing = ", ".join(_sql_string(p) for p in files)
    con.execute(f"CREATE VIEW frames AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
    # manifest columns are the same for every row of an item: carry them into `items`
    columns = [r[0] for r in con.execute("DESCRIBE frames").fetchall()]
    reserved = set(ROW_SCHEMA.names) | {"n_frames", "n_errors", "n_person_frames", "max_person_fraction",
                                        "mean_person_fraction", "min_confidence", "mean_confidence",
                                        "first_person_s", "last_person_s", "last_timestamp_s",
                                        "n_segments", "person_s"}
    extras = "".join(f", any_value({_ident(c)}) AS {_ident(c)}" for c in columns if c not in reserved)
    threshold = repr(float(min_person_fraction))
    con.execute(ITEMS_VIEW.format(min=threshold, extras=extras))
    con.execute(SEGMENTS_MACRO.format(default=threshold))
    con.execute("CREATE VIEW person_segments AS SELECT * FROM person_segments_at()")
    con.execute(VIDEOS_VIEW)
    return Output(con, storage, files)


def one_line(exc: BaseException) -> str:
    """DuckDB's message on one line, without the caret drawing under the SQL."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(exc).__name__


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def run_sql(output: Output, sql: str) -> duckdb.DuckDBPyRelation | None:
    """Run user SQL; a DuckDB error becomes a one-line message and exit code 2."""
    try:
        return output.con.sql(sql)
    except duckdb.Error as exc:
        fail(f"query failed: {one_line(exc)}")


@click.command(epilog="Views: frames, items, videos, person_segments; macro person_segments_at(min_fraction). "
                      "See docs/query-preview.md. Exit codes: 0 ok; 2 bad SQL, missing OUT or bad options.")
@click.argument("out")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="table: aligned text; csv; json: JSON Lines, one object per row; "
                                      "parquet: needs --out.")
@click.option("--out", "out_file", help="Write the result to this file (local path or s3://) instead of stdout.")
@click.option("--limit", type=click.IntRange(min=0), help=f"At most N rows [table: {TABLE_ROWS}; others: all].")
@click.option("--min-person-fraction", type=click.FloatRange(0, 1), default=DEFAULT_MIN_PERSON, show_default=True,
              help="A frame shows a person when person_fraction is above this (items, videos, person_segments).")
@click.option("--endpoint-url", help="S3-compatible endpoint (or HUMANSEG_S3_ENDPOINT_URL).")
def query(out, sql, fmt, out_file, limit, min_person_fraction, endpoint_url):
    """Run SQL over the committed results in OUT (local folder or s3://bucket/prefix).

    \b
    Examples:
      humanseg-batch query OUT "select id, max_person_fraction from items where max_person_fraction > 0.3"
      humanseg-batch query OUT "select * from person_segments where id = 'cam1.mp4'" --format csv
    """
    if fmt == "parquet" and not out_file:
        fail("--format parquet needs --out FILE")
    try:
        output = open_output(out, endpoint_url, min_person_fraction)
    except OutputError as exc:
        fail(str(exc))
    except duckdb.Error as exc:
        fail(f"cannot read the Parquet files of {out}: {one_line(exc)}")
    rel = run_sql(output, sql)
    if rel is None:           # a statement without a result (CREATE, SET, ...)
        return
    try:
        n = emit(rel, fmt, out_file, limit, endpoint_url)
    except duckdb.Error as exc:
        fail(f"query failed: {one_line(exc)}")
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc}")
    if out_file:
        click.echo(f"{n} row(s) written to {out_file}", err=True)
