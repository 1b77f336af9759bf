"""The catalogue out: one row per image (distinct content) as Parquet or CSV, for analytics and
training sets (like img2dataset's parquet metadata).

Rows stream from a server-side cursor in image-id order and are written a chunk at a time
(pyarrow's ``ParquetWriter`` or ``CSVWriter``), so memory stays flat in the size of
the catalogue. The file is written under a temporary name and renamed when complete. Columns:
ids, the first source path (and how many paths share the content), status, URLs, size and
format, EXIF fields, place, tags (best first), caption, the near-duplicate group, and with
``model`` the image's vector of that model (``null`` where it has none).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pgvector.psycopg import register_vector

from assemblage_assets.constants import NOT_INGESTED_STATUSES
from assemblage_assets.core.reports import Progress

FORMATS = ("parquet", "csv")
CHUNK_ROWS = 1000

# (column, SQL expression, Arrow type): the one place the export's columns are defined.
_COLUMNS: list[tuple[str, str, pa.DataType]] = [
    ("image_id", "i.id::text", pa.string()),
    ("shard", "p.shard", pa.string()),
    ("local_path", "p.local_path", pa.string()),
    ("paths", "p.paths", pa.int32()),
    ("status", "p.status", pa.string()),
    ("original_url", "i.original_url", pa.string()),
    ("thumbnail_url", "i.thumbnail_url", pa.string()),
    ("preview_url", "i.preview_url", pa.string()),
    ("original_key", "i.original_key", pa.string()),
    ("content_hash", "i.content_hash", pa.string()),
    ("bytes", "i.bytes", pa.int64()),
    ("width", "i.width", pa.int32()),
    ("height", "i.height", pa.int32()),
    ("format", "i.format", pa.string()),
    ("mode", "i.mode", pa.string()),
    ("frame_count", "i.frame_count", pa.int32()),
    ("captured_at", "i.captured_at", pa.timestamp("us")),
    ("captured_at_source", "i.captured_at_source", pa.string()),
    ("camera_make", "i.exif_data->>'make'", pa.string()),
    ("camera_model", "i.exif_data->>'model'", pa.string()),
    ("lens_model", "i.exif_data->>'lens_model'", pa.string()),
    ("iso", "(i.exif_data->>'iso')::int", pa.int32()),
    ("f_number", "(i.exif_data->>'f_number')::float8", pa.float64()),
    ("exposure_time", "(i.exif_data->>'exposure_time')::float8", pa.float64()),
    ("focal_length_mm", "(i.exif_data->>'focal_length_mm')::float8", pa.float64()),
    ("orientation", "(i.exif_data->>'orientation')::int", pa.int32()),
    ("exif", "i.exif_data::text", pa.string()),
    ("latitude", "i.latitude", pa.float64()),
    ("longitude", "i.longitude", pa.float64()),
    ("place_city", "i.place_city", pa.string()),
    ("place_region", "i.place_region", pa.string()),
    ("place_country", "i.place_country", pa.string()),
    ("palette", "i.palette::text", pa.string()),
    ("tags", "(SELECT array_agg(t.tag ORDER BY t.c DESC, t.tag) FROM (SELECT tag, max(confidence) AS c "
             "FROM image_tags WHERE image_id = i.id GROUP BY tag) t)", pa.list_(pa.string())),
    ("caption", "i.caption", pa.string()),
    ("caption_model", "i.caption_model", pa.string()),
    ("duplicate_group", "d.group_id", pa.int64()),
    ("duplicate_representative", "g.representative_id::text", pa.string()),
    ("owner", "i.owner", pa.string()),
]
VECTOR_COLUMN = "vector"


@dataclass(frozen=True)
class ExportReport:
    path: Path
    rows: int
    columns: list[str]
    seconds: float
    with_vectors: bool


def _query(shard: str | None, model: str | None) -> str:
    columns = ", ".join(f"{expr} AS {name}" for name, expr, _ in _COLUMNS)
    vector = ", e.embedding AS vector" if model else ""
    join_vector = "LEFT JOIN image_embeddings e ON e.image_id = i.id AND e.model = %(model)s" if model else ""
    # The first ingested path of each image (of the shard when one is asked for), with the count.
    return f"""
        SELECT {columns}{vector}
        FROM images i
        JOIN LATERAL (SELECT pl.shard, pl.local_path, pl.status, count(*) OVER () AS paths
                      FROM processing_log pl
                      WHERE pl.image_id = i.id AND pl.status <> ALL(%(dropped)s)
                        {"AND pl.shard = %(shard)s" if shard else ""}
                      ORDER BY pl.local_path LIMIT 1) p ON true
        LEFT JOIN duplicate_members d ON d.image_id = i.id
        LEFT JOIN duplicate_groups g ON g.id = d.group_id
        {join_vector}
        {"WHERE i.id IN (SELECT image_id FROM processing_log WHERE shard = %(shard)s)" if shard else ""}
        ORDER BY i.id"""


def count_images(conn: psycopg.Connection, shard: str | None = None) -> int:
    """Images the export would write (for the progress line's ETA)."""
    row = conn.execute(
        f"""SELECT count(DISTINCT image_id) AS n FROM processing_log
            WHERE image_id IS NOT NULL AND status <> ALL(%(dropped)s) {"AND shard = %(shard)s" if shard else ""}""",
        {"dropped": list(NOT_INGESTED_STATUSES), "shard": shard},
    ).fetchone()
    return int(row["n"] if isinstance(row, dict) else row[0])


def schema(with_vectors: bool) -> pa.Schema:
    fields = [pa.field(name, kind) for name, _, kind in _COLUMNS]
    if with_vectors:
        fields.append(pa.field(VECTOR_COLUMN, pa.list_(pa.float32())))
    return pa.schema(fields)


def _chunks(conn: psycopg.Connection, shard: str | None, model: str | None, chunk_rows: int) -> Iterator[list[tuple]]:
    params = {"dropped": list(NOT_INGESTED_STATUSES), "shard": shard, "model": model}
    if model:
        register_vector(conn)  # vectors arrive as float32 numpy arrays (binary), not text
    with conn.transaction(), conn.cursor(
        name="catalogue_export", row_factory=psycopg.rows.tuple_row, binary=True
    ) as cur:
        cur.itersize = chunk_rows
        cur.execute(_query(shard, model), params)
        while rows := cur.fetchmany(chunk_rows):
            yield rows


def _table(rows: list[tuple], target: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    arrays = []
    for values, field in zip(columns, target, strict=True):
        arrays.append(_vectors(values) if field.name == VECTOR_COLUMN else pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=target)


def _vectors(values: tuple) -> pa.Array:
    """A list<float32> column from numpy vectors (None: no vector), without a Python float each."""
    arrays = [None if v is None else np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)
              for v in values]
    present = [v for v in arrays if v is not None]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([0 if v is None else len(v) for v in arrays])
    flat = np.concatenate(present) if present else np.zeros(0, dtype=np.float32)
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), type=pa.list_(pa.float32()), mask=mask)


def _csv_table(table: pa.Table) -> pa.Table:
    """Lists as JSON arrays: a CSV cell holds one value."""
    for name in ("tags", VECTOR_COLUMN):
        if name in table.column_names:
            index = table.column_names.index(name)
            values = [None if v is None else json.dumps(v) for v in table.column(name).to_pylist()]
            table = table.set_column(index, name, pa.array(values, type=pa.string()))
    return table


def _csv_schema(target: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_list(f.type) else f for f in target])


def export_catalogue(
    conn: psycopg.Connection,
    output: Path,
    fmt: str,
    *,
    shard: str | None = None,
    model: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the catalogue (of ``shard``, or all of it) to ``output``; ``model``: add each image's
    vector of that model. Progress with an ETA every few seconds."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    started = time.perf_counter()
    total = count_images(conn, shard)
    target = schema(model is not None)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    rows = 0
    last_note = started
    if fmt == "parquet":
        writer: Any = pq.ParquetWriter(partial, target, compression="zstd")
    else:
        writer = pacsv.CSVWriter(partial, _csv_schema(target))  # the header, even when nothing follows
    try:
        for chunk in _chunks(conn, shard, model, chunk_rows):
            table = _table(chunk, target)
            writer.write_table(table if fmt == "parquet" else _csv_table(table))
            rows += len(chunk)
            now = time.perf_counter()
            if progress and (now - last_note >= 2 or rows == total):
                last_note = now
                progress(_progress_line(rows, total, now - started))
        writer.close()
        writer = None
        os.replace(partial, output)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return ExportReport(output, rows, target.names, time.perf_counter() - started, model is not None)


def _progress_line(rows: int, total: int, seconds: float) -> str:
    rate = rows / seconds if seconds > 0 else 0.0
    left = max(0, total - rows)
    eta = f", ETA {left / rate:.0f}s" if rate and left else ""
    share = f" ({rows / total:.0%})" if total else ""
    return f"exported {rows:,}/{total:,} images{share}, {rate:,.0f}/s{eta}"
