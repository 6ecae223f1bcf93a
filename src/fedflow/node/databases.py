"""Datasets that are SQL queries: DuckDB (embedded) and PostgreSQL (psycopg 3).

A query dataset is opened at ``Setup`` by running its query once, streaming the result in record
batches: the row count, the columns' kinds and missing values, and the fingerprint — sha256 of the
result's canonical encoding (the Arrow IPC stream of the result, in the query's column order, in
batches of ``CANONICAL_ROWS`` rows) — are computed batch by batch and nothing is kept. At
``Prepare`` the query runs again, selecting only the columns the app needs
(``SELECT "a", "b" FROM (query)``). Rows go through the same typing and checks as files.

Connections and credentials come from the site configuration (``duckdb = "…"``,
``postgres = "service=…"``) or the site's environment (``dsn_env = "COHORT_DSN"``), never from a
study. A result whose row order is not fixed (no ``ORDER BY``) may give another fingerprint on
each run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fedflow.apps.base import Table
from fedflow.errors import DataError, PolicyError
from fedflow.node.data import (
    Batch,
    FileFingerprint,
    LoadedData,
    Part,
    Source,
    _as_strings,
    _collect,
    _merge,
    changed,
    column_kind,
    nulls,
    open_files,
    to_numpy,
    type_strings,
    typed_pieces,
)
from fedflow.node.siteconfig import Dataset

__all__ = ["CANONICAL_ROWS", "QuerySource", "open_dataset"]

CANONICAL_ROWS = 1 << 16
"""Rows per record batch of the canonical encoding a query's fingerprint hashes."""
_FETCH = 1 << 16

Batches = Callable[[Sequence[str] | None], Iterator[pa.RecordBatch]]
"""Runs the query (only the columns named, or all of them) and yields its record batches."""


def open_dataset(dataset: Dataset, *, site: str | None = None) -> Source:
    """Open a dataset of the site configuration: its files, or its query. Raises DataError
    naming the dataset for a database that cannot be reached or a query that fails."""
    if dataset.query is None:
        return open_files(dataset.paths, site=site, **dataset.reading())
    batches = _duckdb(dataset) if dataset.duckdb is not None else _postgres(dataset)
    return QuerySource(dataset.name, batches, site=site)


class _HashSink:
    """A write-only stream that hashes and counts what is written."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Yield the same rows in batches of exactly ``rows`` rows (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield from table.slice(0, rows).to_batches(max_chunksize=rows)
            rest = table.slice(rows)
            pending = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches(max_chunksize=rows)


class QuerySource(Source):
    """A SQL query's result, opened: fingerprint, rows, kinds and missing values (exact)."""

    def __init__(self, name: str, batches: Batches, *, site: str | None = None) -> None:
        self.site = site
        self.name = name
        self._batches = batches
        self.hints = []
        label = f"query:{name}"
        sink = _HashSink()
        rows = 0
        kinds: dict[str, str] = {}
        missing: dict[str, int] = {}
        writer: pa.ipc.RecordBatchStreamWriter | None = None
        schema: pa.Schema | None = None
        for batch in _rebatch(self._run(None), CANONICAL_ROWS):
            if writer is None:
                schema = batch.schema
                writer = pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), schema)
            writer.write_batch(batch)
            rows += batch.num_rows
            for column, array in zip(batch.schema.names, batch.columns, strict=True):
                kind, gone = _kind(array)
                kinds[column] = _wider(kinds[column], kind) if column in kinds else kind
                missing[column] = missing.get(column, 0) + gone
        if writer is not None:
            writer.close()
        if schema is None:
            raise DataError(f"dataset '{name}': the query returned no rows", site=site, file=label)
        dupes = sorted({c for c in schema.names if schema.names.count(c) > 1})
        if dupes:
            raise DataError(
                f"dataset '{name}': the query returns duplicate column names: {', '.join(dupes)}",
                site=site,
                file=label,
            )
        for column, kind in kinds.items():  # integers with a missing value are read as floats
            if kind == "int" and missing.get(column):
                kinds[column] = "float"
        self.types = {f.name: f.type for f in schema}
        self.kinds = kinds
        self.missing = {c: m for c, m in missing.items() if m}
        self.rows = rows
        self.files = [FileFingerprint(label, sink.digest.hexdigest(), sink.size, rows)]

    def _run(self, names: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._batches(names)
        except DataError:
            raise
        except Exception as exc:  # each driver raises its own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"dataset '{self.name}': the query failed ({first})",
                site=self.site,
                file=f"query:{self.name}",
            ) from None

    def parts(self, names: list[str]) -> Iterator[Part]:
        """Run the query for the columns ``names`` and yield its record batches' pieces."""
        types = {n: self.types[n] for n in names}
        for batch in self._run(names):
            yield batch.num_rows, typed_pieces(batch, types)

    def stream(self, names: list[str], text: set[str]) -> Iterator[Batch]:
        at = 0
        for size, pieces in self.parts(names):
            if at + size > self.rows:
                raise changed(self.files[0].name)
            yield Batch(0, at, size, pieces)
            at += size
        if at != self.rows:
            raise changed(self.files[0].name)

    def _load(self, names: list[str]) -> LoadedData:
        label = self.files[0].name
        pieces = _collect(self.parts(names), names, self.rows, label)
        columns: dict[str, np.ndarray] = {}
        missing: dict[str, np.ndarray] = {}
        for name in names:
            columns[name], mask = _merge([pieces.pop(name)], [lambda: None])
            if mask.any():
                missing[name] = mask
        return LoadedData(Table(columns), self.files, None, missing, [])


def _kind(array: pa.Array) -> tuple[str, int]:
    """Return the kind of one batch of a result column and its missing values."""
    kind = array.type
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = to_numpy(array.cast(pa.float64()))
        return "float", int((np.isnan(values) | nulls(array)).sum())
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return "int", array.null_count
    values, gone = type_strings(_as_strings(array))
    return column_kind(values), int(gone.sum())


def _wider(a: str, b: str) -> str:
    if "str" in (a, b):
        return "str"
    return "int" if a == b == "int" else "float"


def _select(query: str, names: Sequence[str] | None) -> str:
    """Return ``query`` reduced to the columns ``names`` (all when None)."""
    if names is None:
        return query
    quoted = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
    return f"SELECT {quoted} FROM ({query.strip().rstrip(';')}) AS fedflow_dataset"


def _duckdb(dataset: Dataset) -> Batches:
    try:
        import duckdb
    except ImportError:
        raise DataError(
            f"dataset '{dataset.name}' is a DuckDB query: this site needs the duckdb package "
            "(pip install 'fedflow-studies[db]')"
        ) from None
    database = dataset.duckdb or ":memory:"
    if database != ":memory:" and not Path(database).exists():
        raise DataError(f"dataset '{dataset.name}': DuckDB database {database} does not exist")
    query = dataset.query or ""

    def batches(names: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
        con = duckdb.connect(database, read_only=database != ":memory:")
        try:
            relation = con.sql(_select(query, names))
            reader = (
                relation.to_arrow_reader(_FETCH)
                if hasattr(relation, "to_arrow_reader")
                else relation.fetch_arrow_reader(_FETCH)
            )
            yield from reader
        finally:
            con.close()

    return batches


_PG_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int64(),
    23: pa.int64(),
    700: pa.float64(),
    701: pa.float64(),
    1700: pa.float64(),
}
"""PostgreSQL type oids read as numbers (bool, int8/2/4, float4/8, numeric); the rest as text."""


def _postgres(dataset: Dataset) -> Batches:
    try:
        import psycopg
    except ImportError:
        raise DataError(
            f"dataset '{dataset.name}' is a PostgreSQL query: this site needs psycopg "
            "(pip install 'fedflow-studies[db]')"
        ) from None
    if dataset.dsn_env is not None:
        dsn = os.environ.get(dataset.dsn_env)
        if not dsn:
            raise PolicyError(
                f"dataset '{dataset.name}': the site's environment variable {dataset.dsn_env} "
                "(its PostgreSQL connection) is not set"
            )
    else:
        dsn = dataset.postgres or ""
    query = dataset.query or ""

    def batches(names: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
        with (
            psycopg.connect(dsn) as conn,
            conn.cursor(name="fedflow_dataset") as cursor,
        ):
            cursor.execute(_select(query, names).encode("utf-8"))
            schema: pa.Schema | None = None
            while True:
                rows = cursor.fetchmany(_FETCH)
                if schema is None:
                    description = cursor.description or []
                    schema = pa.schema(
                        [(d.name, _PG_TYPES.get(d.type_code, pa.string())) for d in description]
                    )
                if not rows:
                    break
                arrays = [_arrow([row[i] for row in rows], f.type) for i, f in enumerate(schema)]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return batches


def _arrow(values: list[Any], kind: pa.DataType) -> pa.Array:
    """Return Python values of one result column as an Arrow array of ``kind`` (string,
    float64, int64 or bool; None is null), built from buffers: ``pa.array`` on Python objects
    imports pandas, 0.4 s at every site."""
    n = len(values)
    gone = np.fromiter((v is None for v in values), dtype=bool, count=n)
    validity = pa.py_buffer(np.packbits(~gone, bitorder="little")) if gone.any() else None
    if kind == pa.string():
        encoded = [
            b"" if v is None else (v if isinstance(v, str) else str(v)).encode() for v in values
        ]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
        return pa.Array.from_buffers(kind, n, buffers, null_count=int(gone.sum()))
    if kind == pa.bool_():
        bits = np.fromiter((bool(v) for v in values), dtype=bool, count=n)
        data = pa.py_buffer(np.packbits(bits, bitorder="little"))
    elif kind == pa.float64():
        data = pa.py_buffer(
            np.fromiter((0.0 if v is None else float(v) for v in values), np.float64, n)
        )
    else:
        data = pa.py_buffer(np.fromiter((0 if v is None else int(v) for v in values), np.int64, n))
    return pa.Array.from_buffers(kind, n, [validity, data], null_count=int(gone.sum()))
