"""Reading a site's data files into a ``Table``: CSV, TSV and Parquet, several files concatenated.

Numbers become int64 (every value an integer literal) or float64 columns, anything else text. The
loader keeps, for every row, which file it came from, so a missing value can be reported with its
file. Fingerprints (sha256, size, rows) are computed here, at the site: only they leave it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedflow.apps.base import Table, check_columns, require_columns
from fedflow.errors import DataError

__all__ = ["NA_VALUES", "LoadedData", "column_kind", "prepare_table", "read_table"]

NA_VALUES = frozenset(
    {"", "NA", "N/A", "n/a", "NaN", "nan", "NAN", "null", "NULL", "None", "#N/A", "-nan", "<NA>"}
)
"""Cells read as missing (a subset of what pandas treats as missing by default)."""

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = {".parquet", ".pq"}


@dataclass(frozen=True)
class FileFingerprint:
    name: str
    sha256: str
    bytes: int
    rows: int


@dataclass
class LoadedData:
    """A site's table plus, per row, the index of the file it came from."""

    table: Table
    files: list[FileFingerprint]
    row_file: np.ndarray
    missing: dict[str, np.ndarray]
    """Per column with missing values: a boolean mask of the missing rows."""
    hints: list[str] = field(default_factory=list)
    """Likely causes of a missing column: a wrong ``sep``, a file without a header."""

    def file_of_first_missing(self, column: str) -> str:
        """Return the name of the first file holding a missing value in ``column``."""
        index = int(np.argmax(self.missing[column]))
        return self.files[int(self.row_file[index])].name


def column_kind(array: np.ndarray) -> str:
    """Return ``int``, ``float`` or ``str`` for a table column."""
    kind = array.dtype.kind
    return "int" if kind in "biu" else "float" if kind == "f" else "str"


_OTHER_SEPARATORS = (";", "\t", "|", ",")


def _sep_hint(cells: Sequence[str], delimiter: str, what: str = "the header") -> str:
    """Return a hint when ``cells`` are one field holding another usual separator, else ''."""
    if len(cells) != 1:
        return ""
    for sep in _OTHER_SEPARATORS:
        if sep != delimiter and sep in cells[0]:
            shown = "\\t" if sep == "\t" else sep
            return (
                f"{what} is one field holding '{shown}': "
                f'if that separates the columns, set sep = "{shown}" for this client'
            )
    return ""


def _header_hint(header: Sequence[str]) -> str:
    """Return a hint when a header cell is a number (a file without a header), else ''."""
    number = next((h for h in header if _is_number(h)), None)
    if number is None:
        return ""
    return (
        f"its first line looks like data (column name '{number}' is a number): if the file has "
        "no header, set header = false and columns = [...] (the names) for this client"
    )


def _read_delimited(
    path: Path,
    data: bytes,
    delimiter: str,
    *,
    header: bool = True,
    names: Sequence[str] | None = None,
    hints: list[str] | None = None,
) -> dict[str, list[str]]:
    """Return a delimited file's columns as text cells. Without ``header`` the columns are
    ``names`` and the first line is data. Hints about a likely wrong ``sep`` or ``header`` are
    appended to ``hints`` (and to the message of a line with the wrong number of fields)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=path.name
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    if header:
        try:
            first = next(reader)
        except StopIteration:
            raise DataError(f"{path.name} is empty", file=path.name) from None
        except csv.Error as exc:
            raise DataError(f"{path.name}: {exc}", file=path.name) from None
        columns_named = [h.strip() for h in first]
        start, what = 2, "the header has"
    else:
        columns_named = [str(n).strip() for n in names or ()]
        start, what = 1, "columns = [...] names"
    if not any(columns_named):
        raise DataError(f"{path.name}: the first line holds no column names", file=path.name)
    dupes = sorted({h for h in columns_named if columns_named.count(h) > 1})
    if dupes:
        raise DataError(f"{path.name}: duplicate column names: {', '.join(dupes)}", file=path.name)
    found = [h for h in (_sep_hint(columns_named, delimiter), _header_hint(columns_named)) if h]
    if header and hints is not None:
        hints.extend(f"{path.name}: {h}" for h in found if f"{path.name}: {h}" not in hints)
    columns: list[list[str]] = [[] for _ in columns_named]
    try:
        for line_no, row in enumerate(reader, start=start):
            if not row:
                continue
            if len(row) != len(columns_named):
                sep_hint = _sep_hint(columns_named, delimiter) or _sep_hint(
                    row, delimiter, f"line {line_no}"
                )
                raise DataError(
                    f"{path.name}: line {line_no} has {len(row)} fields, {what} {len(columns_named)}"
                    + (f"; {sep_hint}" if sep_hint else ""),
                    file=path.name,
                )
            for cells, cell in zip(columns, row, strict=True):
                cells.append(cell.strip())
    except csv.Error as exc:
        raise DataError(f"{path.name}: {exc}", file=path.name) from None
    return dict(zip(columns_named, columns, strict=True))


Typed = tuple[np.ndarray, np.ndarray]
"""A column already typed by its file (Parquet): values and the mask of missing values."""


def _read_parquet(path: Path, data: bytes) -> dict[str, list[str] | Typed]:
    """Return a Parquet file's columns (from the bytes already read): numbers and booleans as
    typed arrays, anything else as text cells."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path.name}: reading Parquet needs pyarrow at this site "
            "(pip install 'fedflow-studies[parquet]')",
            file=path.name,
        ) from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(
            f"{path.name}: not a readable Parquet file ({exc})", file=path.name
        ) from None
    out: dict[str, list[str] | Typed] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_floating(kind):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            out[str(name)] = (values, np.isnan(values))
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            mask = column.is_null().to_numpy(zero_copy_only=False)
            filled = column.fill_null(False if pa.types.is_boolean(kind) else 0)
            values = filled.to_numpy(zero_copy_only=False).astype(np.int64)
            out[str(name)] = (values, np.asarray(mask, dtype=bool))
        else:
            out[str(name)] = ["" if v is None else str(v) for v in column.to_pylist()]
    return out


def _as_text(column: Typed) -> list[str]:
    """Return typed values as the text cells a CSV file would hold (missing as '')."""
    values, missing = column
    integral = values.dtype.kind in "biu"
    return [
        "" if gone else str(int(v)) if integral else repr(float(v))
        for v, gone in zip(values.tolist(), missing.tolist(), strict=True)
    ]


def _merge(pieces: Sequence[list[str] | Typed]) -> Typed:
    """Return one column from its pieces in every file: typed pieces are concatenated as they
    are; as soon as one file holds text cells, everything is read as text (see ``_typed``)."""
    typed = [p for p in pieces if isinstance(p, tuple)]
    if len(typed) == len(pieces):
        arrays = [values for values, _ in typed]
        missing = np.concatenate([gone for _, gone in typed])
        if missing.any() or any(a.dtype.kind == "f" for a in arrays):
            column = np.concatenate([a.astype(np.float64) for a in arrays])
            column[missing] = np.nan
            return column, missing
        return np.concatenate(arrays).astype(np.int64), missing
    cells: list[str] = []
    for piece in pieces:
        cells.extend(_as_text(piece) if isinstance(piece, tuple) else piece)
    return _typed(cells)


def _typed(cells: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return (typed column, missing mask) for one column's text cells."""
    raw = np.array(cells, dtype=object)
    missing = np.fromiter((c in NA_VALUES for c in cells), dtype=bool, count=len(cells))
    present = raw[~missing]
    try:
        numbers = present.astype(np.float64)
    except (ValueError, TypeError):
        text = raw.copy()
        text[missing] = None
        return text, missing
    integral = not missing.any() and all(c.lstrip("+-").isdigit() for c in present)
    if integral:
        try:
            return present.astype(np.int64), missing
        except (ValueError, OverflowError):
            pass
    column = np.full(len(cells), np.nan)
    column[~missing] = numbers
    return column, missing


def read_table(
    paths: Sequence[str | Path],
    *,
    site: str | None = None,
    sep: str | None = None,
    header: bool = True,
    columns: Sequence[str] | None = None,
) -> LoadedData:
    """Read and concatenate a site's data files.

    ``sep`` replaces the separator of CSV and TSV files (default ``,`` and tab); with
    ``header = False`` their first line is data and ``columns`` names the columns (Parquet files
    always carry their names). Returns the table, each file's fingerprint and each row's file.
    Raises DataError naming the site and file for a missing, unreadable or empty file, or files
    whose columns disagree.
    """
    if not paths:
        raise DataError("no data files given (set data = [...] for this client)", site=site)
    if not header and not columns:
        raise DataError(
            "header = false needs the column names: set columns = [...] for this client",
            site=site,
        )
    hints: list[str] = []
    parts: list[Mapping[str, list[str] | Typed]] = []
    fingerprints: list[FileFingerprint] = []
    for item in paths:
        path = Path(item)
        suffix = path.suffix.lower()
        if suffix not in _DELIMITERS and suffix not in _PARQUET:
            raise DataError(
                f"{path.name}: unsupported file type '{suffix}' (use .csv, .tsv or .parquet)",
                site=site,
                file=path.name,
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"data file {path} does not exist", site=site, file=str(path)) from None
        except OSError as exc:
            raise DataError(
                f"cannot read data file {path}: {exc.strerror}", site=site, file=str(path)
            ) from None
        try:
            read = (
                _read_parquet(path, data)
                if suffix in _PARQUET
                else _read_delimited(
                    path,
                    data,
                    sep or _DELIMITERS[suffix],
                    header=header,
                    names=columns,
                    hints=hints,
                )
            )
        except DataError as exc:
            exc.site = site
            raise
        first = next(iter(read.values()), [])
        rows = len(first[0]) if isinstance(first, tuple) else len(first)
        if rows == 0:
            empty = "has a header but no rows" if header or suffix in _PARQUET else "is empty"
            raise DataError(f"{path.name} {empty}", site=site, file=path.name)
        if parts and list(read) != list(parts[0]):
            raise DataError(
                f"{path.name}: columns differ from {fingerprints[0].name} "
                f"({', '.join(read)} vs {', '.join(parts[0])})",
                site=site,
                file=path.name,
            )
        digest = hashlib.sha256(data).hexdigest()
        fingerprints.append(FileFingerprint(path.name, digest, len(data), rows))
        parts.append(read)
    merged: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for name in parts[0]:
        merged[name], mask = _merge([part[name] for part in parts])
        if mask.any():
            missing[name] = mask
    row_file = np.repeat(np.arange(len(parts)), [f.rows for f in fingerprints])
    return LoadedData(Table(merged), fingerprints, row_file, missing, hints)


def prepare_table(
    loaded: LoadedData, needed: Mapping[str, str], *, dropna: bool, min_count: int
) -> Table:
    """Check a site's data against what an app needs and return the table the app will see.

    ``needed`` maps columns to ``numeric``, ``binary`` or ``any``. Rows with a missing value in a
    needed column are dropped when ``dropna``, else refused. Raises DataError naming the file and
    column for a missing or non-numeric column, missing values, or fewer than ``min_count`` rows.
    """
    table = loaded.table
    files = ", ".join(f.name for f in loaded.files)
    try:
        require_columns(table, needed, where=files)
    except DataError as exc:
        if loaded.hints:
            exc.message = f"{exc.message}; {'; '.join(loaded.hints)}"
            exc.args = (exc.message,)
        raise
    keep = np.ones(table.n_rows, dtype=bool)
    for name in needed or table.columns:
        if name not in loaded.missing:
            continue
        if not dropna:
            first = loaded.file_of_first_missing(name)
            count = int(loaded.missing[name].sum())
            raise DataError(
                f"{first}: column '{name}' has {count} missing value(s) "
                "(set dropna = true in the study to drop those rows)",
                file=first,
                column=name,
            )
        keep &= ~loaded.missing[name]
    if not keep.all():
        table = table.select(keep)
    columns = {c: table[c] for c in table.columns}
    for name, kind in needed.items():
        if kind in ("numeric", "binary") and columns[name].dtype.kind == "O":
            # text, or numbers that only parse once the rows with missing values are gone
            try:
                columns[name] = columns[name].astype(np.float64)
            except (TypeError, ValueError):
                example = next((v for v in columns[name] if not _is_number(v)), "?")
                raise DataError(
                    f"column '{name}' is not numeric in {files} (e.g. value {example!r})",
                    column=name,
                ) from None
    table = Table(columns)
    check_columns(table, needed, min_count=min_count, where=files)  # type: ignore[arg-type]
    kept = np.flatnonzero(keep)
    for name, kind in needed.items():
        values = columns[name]
        if kind not in ("numeric", "binary") or values.dtype.kind != "f":
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            raise _non_finite(loaded, name, int(kept[int(np.argmax(bad))]), int(bad.sum()))
    return table


def _non_finite(loaded: LoadedData, column: str, index: int, count: int) -> DataError:
    """Return the error for a non-finite value (inf, -inf) at row ``index`` of the loaded table,
    naming the file, the column and the row within that file (1 = the first data row)."""
    number = int(loaded.row_file[index])
    file = loaded.files[number].name
    row = index - sum(f.rows for f in loaded.files[:number]) + 1
    value = loaded.table[column][index]
    more = f" and {count - 1} more" if count > 1 else ""
    return DataError(
        f"{file}: column '{column}' holds the non-finite value {value!s} in row {row}{more} "
        "(fix or remove it: only finite numbers can be analysed)",
        file=file,
        column=column,
    )


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
