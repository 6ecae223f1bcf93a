"""A site's data: CSV, TSV and Parquet files (several, or globs) and SQL queries, read with pyarrow.

Two steps, so that a site holds only what an app needs:

- **open** (at ``Setup``): ``open_files`` streams every file once to compute its fingerprint
  (sha256 of its bytes) and row count, and reads its column names and kinds (Parquet: from the
  file's schema; CSV: typed from the first 4 MiB, without a full parse). Nothing is kept.
- **load** (at ``Prepare``): ``Source.load(names)`` reads only the columns named, straight into
  numpy (numbers as int64/float64, text as object arrays built from dictionary-encoded categories,
  so each distinct label is one Python string); ``prepare_table`` then checks them.

Typing rules (those of the former csv-module loader, kept exactly): cells are stripped; a cell in
``NA_VALUES`` is missing; a column is int64 when every cell is an integer literal and none is
missing, float64 when every present cell is a number, else text. Across files, typed columns
concatenate as they are; as soon as one file holds text, the whole column is typed as text. Every
error is one line naming the site, the file, the column and, where it has one, the row.
"""

from __future__ import annotations

import csv
import functools
import glob
import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedflow.apps.base import Table, check_columns, require_columns
from fedflow.errors import DataError

__all__ = [
    "NA_VALUES",
    "FileFingerprint",
    "FileSource",
    "LoadedData",
    "MemorySource",
    "Source",
    "column_kind",
    "open_files",
    "prepare_source",
    "prepare_table",
    "read_batches",
    "read_table",
    "type_strings",
]

NA_VALUES = frozenset(
    {"", "NA", "N/A", "n/a", "NaN", "nan", "NAN", "null", "NULL", "None", "#N/A", "-nan", "<NA>"}
)
"""Cells read as missing (a subset of what pandas treats as missing by default)."""


def _strings(values: Sequence[str]) -> pa.Array:
    """Return a string array built from its buffers: ``pa.array`` on Python objects imports
    pandas (0.4 s), which every local site would pay at start through the fork server."""
    data = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.StringArray.from_buffers(
        len(data), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(data))
    )


_NA = _strings(sorted(NA_VALUES))
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = {".parquet", ".pq"}
_CHUNK = 1 << 20
_SAMPLE = 1 << 22
"""Bytes of a CSV file typed at Setup to report its columns' kinds."""
_BATCH = 1 << 16
_INTEGER = r"^[+-]?[0-9]+$"


@dataclass(frozen=True)
class FileFingerprint:
    name: str
    sha256: str
    bytes: int
    rows: int


@dataclass
class LoadedData:
    """Loaded columns of a site's data, its files' fingerprints, and the missing values."""

    table: Table
    files: list[FileFingerprint]
    row_file: np.ndarray | None = None
    """Per row, the index of its file (only ``read_table`` fills it; rows are located by the
    files' row counts)."""
    missing: dict[str, np.ndarray] = field(default_factory=dict)
    """Per column with missing values: a boolean mask of the missing rows."""
    hints: list[str] = field(default_factory=list)
    """Likely causes of a missing column: a wrong ``sep``, a file without a header."""

    def locate(self, index: int) -> tuple[str, int]:
        """Return the file holding row ``index`` of the table and the row's number in it (1 =
        its first data row)."""
        start = 0
        for f in self.files:
            if index < start + f.rows:
                return f.name, index - start + 1
            start += f.rows
        return self.files[-1].name, index - start + self.files[-1].rows + 1

    def file_of_first_missing(self, column: str) -> str:
        """Return the name of the first file holding a missing value in ``column``."""
        return self.locate(int(np.argmax(self.missing[column])))[0]


def column_kind(array: np.ndarray) -> str:
    """Return ``int``, ``float`` or ``str`` for a table column."""
    kind = array.dtype.kind
    return "int" if kind in "biu" else "float" if kind == "f" else "str"


# -- sources ---------------------------------------------------------------------------------
class Source(ABC):
    """What a site serves, opened at ``Setup``: fingerprints, rows, column names and kinds.

    ``load(names)`` reads those columns (at ``Prepare``); nothing else is held in between.
    """

    site: str | None = None
    files: list[FileFingerprint]
    rows: int
    kinds: dict[str, str]
    """Column name → ``int``, ``float`` or ``str``, in the order of the data."""
    missing: dict[str, int]
    """Missing values per column where known without reading every value (else absent)."""
    hints: list[str]

    @property
    def columns(self) -> list[str]:
        return list(self.kinds)

    def restrict(self, allowed: Sequence[str]) -> None:
        """Serve only the ``allowed`` columns (the site configuration's ``columns``)."""
        keep = set(allowed)
        self.kinds = {c: k for c, k in self.kinds.items() if c in keep}
        self.missing = {c: m for c, m in self.missing.items() if c in keep}

    def load(self, names: Sequence[str]) -> LoadedData:
        """Return the columns ``names`` (in the data's order), their missing values and the
        fingerprints. Raises DataError naming the site, file, column (and row) of bad data."""
        wanted = set(names)
        chosen = [c for c in self.kinds if c in wanted]
        try:
            return self._load(chosen)
        except DataError as exc:
            exc.site = self.site
            raise

    @abstractmethod
    def _load(self, names: list[str]) -> LoadedData:
        """Return the named columns, checked and typed."""


class MemorySource(Source):
    """Data already in memory (in-memory runs and tests)."""

    def __init__(self, loaded: LoadedData) -> None:
        self.loaded = loaded
        table = loaded.table
        self.files = loaded.files
        self.rows = table.n_rows
        self.kinds = {c: column_kind(table[c]) for c in table.columns}
        self.missing = {c: int(m.sum()) for c, m in loaded.missing.items()}
        self.hints = loaded.hints

    def _load(self, names: list[str]) -> LoadedData:
        loaded = self.loaded
        return LoadedData(
            Table({c: loaded.table[c] for c in names}),
            loaded.files,
            loaded.row_file,
            {c: m for c, m in loaded.missing.items() if c in names},
            loaded.hints,
        )


Typed = tuple[np.ndarray, np.ndarray]
"""A typed column piece: values and the mask of missing values."""
Piece: TypeAlias = "Typed | pa.Array"
"""One file's part of a column: typed, or text cells (a pyarrow string array) typed when merged."""


class _File(ABC):
    """One data file: fingerprint, column names and kinds, and how to read some columns."""

    fingerprint: FileFingerprint
    kinds: dict[str, str]

    @abstractmethod
    def read(self, names: list[str]) -> dict[str, Piece]:
        """Return the named columns' pieces."""

    def strings(self, name: str) -> pa.Array | None:
        """The column's raw text cells when it must be typed as text with other files."""
        return None


class FileSource(Source):
    """A site's data files (CSV, TSV, Parquet), opened: see ``open_files``."""

    def __init__(self, site: str | None, files: list[_File], hints: list[str]) -> None:
        self.site = site
        self._files = files
        self.files = [f.fingerprint for f in files]
        self.rows = sum(f.rows for f in self.files)
        kinds: dict[str, str] = {}
        for f in files:
            for name, kind in f.kinds.items():
                kinds[name] = _wider(kinds[name], kind) if name in kinds else kind
        self.kinds = kinds
        self.missing = {}
        self.hints = hints

    def _load(self, names: list[str]) -> LoadedData:
        parts = [f.read(names) for f in self._files]
        merged: dict[str, np.ndarray] = {}
        missing: dict[str, np.ndarray] = {}
        for name in names:
            pieces = [part.pop(name) for part in parts]
            merged[name], mask = _merge(
                pieces, [functools.partial(f.strings, name) for f in self._files]
            )
            del pieces
            if mask.any():
                missing[name] = mask
        return LoadedData(Table(merged), self.files, None, missing, self.hints)


def _wider(a: str, b: str) -> str:
    if "str" in (a, b):
        return "str"
    return "int" if a == b == "int" else "float"


def expand(paths: Sequence[str | Path], *, site: str | None = None) -> list[Path]:
    """Return ``paths`` with globs (``*``, ``?``, ``[…]``) expanded in sorted order. Raises
    DataError for a glob that matches no file."""
    out: list[Path] = []
    for item in paths:
        text = str(item)
        if any(ch in text for ch in "*?[") and not Path(text).exists():
            found = sorted(glob.glob(str(Path(text).expanduser()), recursive=True))
            if not found:
                raise DataError(f"data files {text} match no file", site=site, file=text)
            out.extend(Path(p) for p in found)
        else:
            out.append(Path(item))
    return out


def open_files(
    paths: Sequence[str | Path],
    *,
    site: str | None = None,
    sep: str | None = None,
    header: bool = True,
    columns: Sequence[str] | None = None,
) -> FileSource:
    """Open a site's data files: fingerprints, row counts, column names and kinds (see module).

    ``sep`` replaces the separator of CSV and TSV files (default ``,`` and tab); with
    ``header = False`` their first line is data and ``columns`` names the columns (Parquet files
    always carry their names). Raises DataError naming the site and file for a missing,
    unreadable or empty file, a line with the wrong number of fields, or files whose columns
    disagree.
    """
    if not paths:
        raise DataError("no data files given (set data = [...] for this client)", site=site)
    if not header and not columns:
        raise DataError(
            "header = false needs the column names: set columns = [...] for this client",
            site=site,
        )
    hints: list[str] = []
    files: list[_File] = []
    for path in expand(paths, site=site):
        suffix = path.suffix.lower()
        if suffix not in _DELIMITERS and suffix not in _PARQUET:
            raise DataError(
                f"{path.name}: unsupported file type '{suffix}' (use .csv, .tsv or .parquet)",
                site=site,
                file=path.name,
            )
        if not path.is_file():
            if path.exists() or path.is_symlink():
                raise DataError(f"cannot read data file {path}", site=site, file=str(path))
            raise DataError(f"data file {path} does not exist", site=site, file=str(path))
        try:
            opened: _File = (
                _ParquetFile(path)
                if suffix in _PARQUET
                else _DelimitedFile(path, sep or _DELIMITERS[suffix], header, columns, hints)
            )
        except DataError as exc:
            exc.site = site
            raise
        except OSError as exc:
            raise DataError(
                f"cannot read data file {path}: {exc.strerror}", site=site, file=str(path)
            ) from None
        if opened.fingerprint.rows == 0:
            empty = "has a header but no rows" if header or suffix in _PARQUET else "is empty"
            raise DataError(f"{path.name} {empty}", site=site, file=path.name)
        if files and list(opened.kinds) != list(files[0].kinds):
            raise DataError(
                f"{path.name}: columns differ from {files[0].fingerprint.name} "
                f"({', '.join(opened.kinds)} vs {', '.join(files[0].kinds)})",
                site=site,
                file=path.name,
            )
        files.append(opened)
    return FileSource(site, files, hints)


def read_table(
    paths: Sequence[str | Path],
    *,
    site: str | None = None,
    sep: str | None = None,
    header: bool = True,
    columns: Sequence[str] | None = None,
) -> LoadedData:
    """Read and concatenate every column of a site's data files (``open_files`` then
    ``load``); ``row_file`` holds each row's file. Raises DataError as ``open_files`` does."""
    source = open_files(paths, site=site, sep=sep, header=header, columns=columns)
    loaded = source.load(source.columns)
    loaded.row_file = np.repeat(np.arange(len(source.files)), [f.rows for f in source.files])
    return loaded


# -- hashing while streaming -------------------------------------------------------------------
class _Hashing(io.RawIOBase):
    """A read-only stream over a file that hashes every byte read."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.size += n
        return n or 0

    def drain(self) -> None:
        """Hash what the reader left unread."""
        while chunk := self._stream.read(_CHUNK):
            self.digest.update(chunk)
            self.size += len(chunk)


def _file_fingerprint(path: Path, rows: int) -> FileFingerprint:
    with path.open("rb") as f:
        hashing = _Hashing(f)
        hashing.drain()
    return FileFingerprint(path.name, hashing.digest.hexdigest(), hashing.size, rows)


# -- delimited files -------------------------------------------------------------------------
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


def _first_line(path: Path) -> bytes:
    """Return the bytes of a file up to and with its first line break (all of a one-line file)."""
    head = b""
    with path.open("rb") as f:
        while b"\n" not in head and (chunk := f.read(1 << 16)):
            head += chunk
    return head.split(b"\n", 1)[0].split(b"\r", 1)[0]


_CONVERSION = re.compile(r"In CSV column #(\d+): .*CSV conversion error")
_FIELDS = re.compile(r"Expected (\d+) columns?, got (\d+)")


class _DelimitedFile(_File):
    def __init__(
        self,
        path: Path,
        delimiter: str,
        header: bool,
        names: Sequence[str] | None,
        hints: list[str],
    ) -> None:
        self.path, self.delimiter, self.header = path, delimiter, header
        if header:
            raw = _first_line(path)
            if not raw and path.stat().st_size == 0:
                raise DataError(f"{path.name} is empty", file=path.name)
            try:
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                    file=path.name,
                ) from None
            try:
                first = next(csv.reader([line], delimiter=delimiter), [])
            except csv.Error as exc:
                raise DataError(f"{path.name}: {exc}", file=path.name) from None
            self.names = [h.strip() for h in first]
            self.what = "the header has"
        else:
            self.names = [str(n).strip() for n in names or ()]
            self.what = "columns = [...] names"
        if not any(self.names):
            raise DataError(f"{path.name}: the first line holds no column names", file=path.name)
        dupes = sorted({h for h in self.names if self.names.count(h) > 1})
        if dupes:
            raise DataError(
                f"{path.name}: duplicate column names: {', '.join(dupes)}", file=path.name
            )
        found = [h for h in (_sep_hint(self.names, delimiter), _header_hint(self.names)) if h]
        if header:
            hints.extend(f"{path.name}: {h}" for h in found if f"{path.name}: {h}" not in hints)
        rows, digest, size = self._count()
        self.fingerprint = FileFingerprint(path.name, digest, size, rows)
        self.kinds = self._sample_kinds() if rows else dict.fromkeys(self.names, "str")

    def _options(
        self, include: Sequence[str], types: Mapping[str, pa.DataType], threads: bool
    ) -> dict[str, Any]:
        return {
            "read_options": pacsv.ReadOptions(
                column_names=self.names,
                skip_rows=1 if self.header else 0,
                block_size=_CHUNK,
                use_threads=threads,
            ),
            "parse_options": pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
            "convert_options": pacsv.ConvertOptions(
                include_columns=list(include),
                column_types=dict(types),
                null_values=sorted(NA_VALUES),
                strings_can_be_null=False,
            ),
        }

    def _stream(
        self,
        source: Any,
        include: Sequence[str],
        types: Mapping[str, pa.DataType],
        threads: bool = True,
    ) -> Iterator[pa.RecordBatch]:
        """Yield record batches; parse errors become DataError naming the file and line."""
        try:
            reader = pacsv.open_csv(source, **self._options(include, types, threads))
            yield from reader
        except pa.ArrowInvalid as exc:
            raise self._error(str(exc)) from None

    def _error(self, message: str) -> DataError:
        name = self.path.name
        converted = _CONVERSION.search(message)
        if converted:
            return _Retype(self.names[int(converted.group(1))])
        if _FIELDS.search(message):
            return self._bad_line()
        if "UTF8" in message or "UTF-8" in message:
            return DataError(f"{name}: not UTF-8 text", file=name)
        return DataError(f"{name}: {message.splitlines()[0]}", file=name)

    def _bad_line(self) -> DataError:
        """Return the error for the first line whose number of fields differs (located with
        the csv module: this path runs only for a broken file)."""
        name = self.path.name
        with self.path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            if self.header:
                next(reader, None)
            for line_no, row in enumerate(reader, start=2 if self.header else 1):
                if row and len(row) != len(self.names):
                    hint = _sep_hint(self.names, self.delimiter) or _sep_hint(
                        row, self.delimiter, f"line {line_no}"
                    )
                    return DataError(
                        f"{name}: line {line_no} has {len(row)} fields, {self.what} "
                        f"{len(self.names)}" + (f"; {hint}" if hint else ""),
                        file=name,
                    )
        return DataError(f"{name}: a line has the wrong number of fields", file=name)

    def _count(self) -> tuple[int, str, int]:
        """Stream the file once: its sha256, size and rows. Without quotes (which may hold line
        breaks) and lone carriage returns, rows are the non-empty lines, counted as the bytes
        stream by; otherwise the CSV reader counts them, checking each line's fields."""
        lines = blank = 0
        simple = True
        pending = 0  # bytes of the current line in earlier chunks
        pending_cr = False  # ... and they are one carriage return
        size = 0
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
                size += len(chunk)
                if not simple:
                    continue
                if b'"' in chunk or chunk.count(b"\r") != chunk.count(b"\r\n"):
                    simple = False
                    continue
                codes = np.frombuffer(chunk, dtype=np.uint8)
                breaks = np.flatnonzero(codes == 10)
                if not len(breaks):
                    pending_cr = pending == 0 and chunk == b"\r"
                    pending += len(chunk)
                    continue
                starts = np.concatenate(([0], breaks[:-1] + 1))
                lengths = breaks - starts
                empty = (lengths == 0) | ((lengths == 1) & (codes[starts] == 13))
                if pending:
                    empty[0] = lengths[0] == 0 and pending == 1 and pending_cr
                blank += int(empty.sum())
                lines += len(breaks)
                tail = chunk[int(breaks[-1]) + 1 :]
                pending, pending_cr = len(tail), tail == b"\r"
        if pending:
            lines += 1  # a last line without a line break
        if simple:
            return lines - blank - (1 if self.header else 0), digest.hexdigest(), size
        rows = 0
        first = self.names[0]
        for batch in self._stream(str(self.path), [first], {first: pa.string()}, threads=False):
            rows += batch.num_rows
        return rows, digest.hexdigest(), size

    def _sample_kinds(self) -> dict[str, str]:
        """Return each column's kind in the first ``_SAMPLE`` bytes (every row of smaller files)."""
        with self.path.open("rb") as f:
            head = f.read(_SAMPLE)
            complete = not f.read(1)
        if not complete and b"\n" in head:
            head = head[: head.rindex(b"\n") + 1]
        types = dict.fromkeys(self.names, pa.string())
        batches = list(self._stream(pa.BufferReader(head), self.names, types, threads=False))
        if not batches:
            return dict.fromkeys(self.names, "str")
        table = pa.Table.from_batches(batches)
        return {
            n: column_kind(
                type_strings(pc.utf8_trim_whitespace(table.column(n).combine_chunks()))[0]
            )
            for n in self.names
        }

    def read(self, names: list[str]) -> dict[str, Piece]:
        as_text = {n for n in names if self.kinds.get(n) != "float"}
        while True:
            try:
                return self._read(names, as_text)
            except _Retype as exc:
                if exc.name in as_text:
                    raise DataError(f"{self.path.name}: cannot read column '{exc.name}'") from None
                as_text.add(exc.name)

    def _read(self, names: list[str], as_text: set[str]) -> dict[str, Piece]:
        rows = self.fingerprint.rows
        types = {n: pa.string() if n in as_text else pa.float64() for n in names}
        floats = {n: np.empty(rows) for n in names if n not in as_text}
        masks = {n: np.zeros(rows, dtype=bool) for n in floats}
        texts: dict[str, list[pa.Array]] = {n: [] for n in as_text}
        at = 0
        for batch in self._stream(str(self.path), names, types):
            end = at + batch.num_rows
            if end > rows:
                raise self._changed()
            for n in floats:
                column = batch.column(n)
                floats[n][at:end] = column.to_numpy(zero_copy_only=False)
                if column.null_count:
                    masks[n][at:end] = column.is_null().to_numpy(zero_copy_only=False)
            for n in texts:
                texts[n].append(pc.utf8_trim_whitespace(batch.column(n)))
            at = end
        if at != rows:
            raise self._changed()
        out: dict[str, Piece] = {n: (floats[n], masks[n]) for n in floats}
        for n, chunks in texts.items():
            out[n] = pa.concat_arrays(chunks) if chunks else _strings([])
        return {n: out[n] for n in names}

    def _changed(self) -> DataError:
        return DataError(
            f"{self.path.name} changed since the site opened it (its rows differ)",
            file=self.path.name,
        )

    def strings(self, name: str) -> pa.Array | None:
        piece = self._read([name], {name})[name]
        assert isinstance(piece, pa.Array)
        return piece


class _Retype(DataError):
    """A column the CSV reader could not convert as numbers: read it again as text."""

    def __init__(self, column: str) -> None:
        super().__init__(f"column '{column}' is not numbers")
        self.name = column


# -- Parquet ---------------------------------------------------------------------------------
class _ParquetFile(_File):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
            schema = self.file.schema_arrow
            rows = self.file.metadata.num_rows
        except OSError:
            raise
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise DataError(
                f"{path.name}: not a readable Parquet file ({exc})", file=path.name
            ) from None
        self.types = {str(f.name): f.type for f in schema}
        self.fingerprint = _file_fingerprint(path, rows)
        kinds: dict[str, str] = {}
        sample: pa.RecordBatch | None = None
        for index, (name, kind) in enumerate(self.types.items()):
            if pa.types.is_floating(kind):
                kinds[name] = "float"
            elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
                kinds[name] = "float" if self._nulls(index, name) else "int"
            else:
                if sample is None:
                    sample = next(self._batches(list(self.types)), None)
                if sample is None:
                    kinds[name] = "str"
                else:
                    cells = _as_strings(sample.column(name))
                    kinds[name] = column_kind(type_strings(cells)[0])
        self.kinds = kinds

    def _nulls(self, index: int, name: str) -> bool:
        """Whether the column holds a null (from the row groups' statistics when they have it)."""
        meta = self.file.metadata
        counts = []
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(index).statistics
            if stats is None or not stats.has_null_count:
                break
            counts.append(stats.null_count)
        else:
            return sum(counts) > 0
        return any(b.column(0).null_count for b in self._batches([name]))

    def _batches(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        try:
            yield from self.file.iter_batches(batch_size=_BATCH, columns=names)
        except (pa.ArrowInvalid, OSError) as exc:
            name = self.path.name
            raise DataError(f"{name}: not a readable Parquet file ({exc})", file=name) from None

    def read(self, names: list[str]) -> dict[str, Piece]:
        return read_batches(
            self._batches(names),
            {n: self.types[n] for n in names},
            self.fingerprint.rows,
            self.path.name,
        )


def read_batches(
    batches: Iterator[pa.RecordBatch], types: Mapping[str, pa.DataType], rows: int, name: str
) -> dict[str, Piece]:
    """Return the columns ``types`` of ``rows`` rows of typed record batches (Parquet, SQL):
    floats (and decimals) as float64 with NaN missing, integers and booleans as int64 with the
    mask of nulls, anything else as text cells typed later. Raises DataError naming ``name``
    when the batches do not hold ``rows`` rows."""
    typed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    texts: dict[str, list[pa.Array]] = {}
    for column, kind in types.items():
        if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            typed[column] = (np.empty(rows), np.zeros(rows, dtype=bool))
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            typed[column] = (np.empty(rows, dtype=np.int64), np.zeros(rows, dtype=bool))
        else:
            texts[column] = []
    at = 0
    for batch in batches:
        end = at + batch.num_rows
        if end > rows:
            break
        for column, (values, mask) in typed.items():
            array = batch.column(column)
            if values.dtype.kind == "f":
                if pa.types.is_decimal(array.type):
                    array = array.cast(pa.float64())
                part = array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                values[at:end] = part
                mask[at:end] = np.isnan(part)
            else:
                if array.null_count:
                    mask[at:end] = array.is_null().to_numpy(zero_copy_only=False)
                    array = array.fill_null(False if pa.types.is_boolean(array.type) else 0)
                values[at:end] = array.to_numpy(zero_copy_only=False)
        for column, chunks in texts.items():
            chunks.append(_as_strings(batch.column(column)))
        at = end
    if at != rows:
        raise DataError(f"{name} changed since the site opened it (its rows differ)", file=name)
    out: dict[str, Piece] = dict(typed)
    for column, chunks in texts.items():
        out[column] = pa.concat_arrays(chunks) if chunks else _strings([])
    return {n: out[n] for n in types}


def _as_strings(column: pa.Array) -> pa.Array:
    """Return a non-numeric column as text cells (missing as '')."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.cast(pa.string()).fill_null("")
    return pa.array(["" if v is None else str(v) for v in column.to_pylist()], pa.string())


# -- typing ----------------------------------------------------------------------------------
def _as_text(column: Typed) -> pa.Array:
    """Return typed values as the text cells a CSV file would hold (missing as '')."""
    values, missing = column
    integral = values.dtype.kind in "biu"
    return pa.array(
        [
            "" if gone else str(int(v)) if integral else repr(float(v))
            for v, gone in zip(values.tolist(), missing.tolist(), strict=True)
        ],
        pa.string(),
    )


def _merge(pieces: list[Piece], strings: Sequence[Callable[[], pa.Array | None]]) -> Typed:
    """Return one column from its pieces in every file: typed pieces are concatenated as they
    are; as soon as one file holds text cells, everything is typed as text (``type_strings``),
    from each file's own text where it has one."""
    if all(isinstance(p, tuple) for p in pieces):
        typed: list[Typed] = pieces  # type: ignore[assignment]
        arrays = [values for values, _ in typed]
        missing = typed[0][1] if len(typed) == 1 else np.concatenate([m for _, m in typed])
        if missing.any() or any(a.dtype.kind == "f" for a in arrays):
            if len(arrays) == 1:
                column = arrays[0].astype(np.float64, copy=False)
            else:
                column = np.concatenate([a.astype(np.float64, copy=False) for a in arrays])
            column[missing] = np.nan
            return column, missing
        if len(arrays) == 1:
            return arrays[0].astype(np.int64, copy=False), missing
        return np.concatenate(arrays).astype(np.int64, copy=False), missing
    cells: list[pa.Array] = []
    for piece, text in zip(pieces, strings, strict=True):
        if isinstance(piece, tuple):
            own = text()
            cells.append(own if own is not None else _as_text(piece))
        else:
            cells.append(piece)
    return type_strings(pa.concat_arrays(cells) if len(cells) > 1 else cells[0])


def type_strings(cells: pa.Array) -> Typed:
    """Return (typed column, missing mask) for one column's text cells (module rules)."""
    cells = cells.fill_null("")
    n = len(cells)
    gone = pc.is_in(cells, value_set=_NA)
    missing = np.asarray(gone.to_numpy(zero_copy_only=False), dtype=bool)
    present = cells.filter(pc.invert(gone)) if missing.any() else cells
    if not missing.any() and (
        n == 0 or pc.all(pc.match_substring_regex(present, _INTEGER)).as_py()
    ):
        try:
            unsigned = pc.replace_substring_regex(present, r"^\+", "")
            return pc.cast(unsigned, pa.int64()).to_numpy(zero_copy_only=False), missing
        except (pa.ArrowInvalid, OverflowError):
            pass
    numbers = _floats(present)
    if numbers is None:
        return _categories(cells, missing), missing
    if not missing.any():
        return numbers, missing
    column = np.full(n, np.nan)
    column[~missing] = numbers
    return column, missing


def _floats(cells: pa.Array) -> np.ndarray | None:
    """Return the cells as float64, or None when one is not a number (Python's ``float``
    decides for spellings pyarrow does not parse, e.g. ``1_000``)."""
    try:
        return np.asarray(pc.cast(cells, pa.float64()).to_numpy(zero_copy_only=False))
    except pa.ArrowInvalid:
        pass
    distinct = pc.unique(cells)
    values = []
    for text in distinct.to_pylist():
        try:
            values.append(float(text))
        except (TypeError, ValueError):
            return None
    index = pc.index_in(cells, value_set=distinct).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)[index]


def _categories(cells: pa.Array, missing: np.ndarray) -> np.ndarray:
    """Return text cells as an object array (None where missing) through their dictionary
    encoding, so each distinct label is one Python string however many rows hold it."""
    encoded = pc.dictionary_encode(cells)
    labels = encoded.dictionary.to_pylist()
    objects = np.empty(len(labels) + 1, dtype=object)
    objects[: len(labels)] = labels
    index = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    index[missing] = len(labels)
    return objects[index]


# -- checks at Prepare -----------------------------------------------------------------------
def prepare_source(
    source: Source, needed: Mapping[str, str], *, dropna: bool, min_count: int
) -> Table:
    """Load the columns an app needs (all of them when it names none) and check them as
    ``prepare_table`` does. Raises DataError naming the site, file and column."""
    where = ", ".join(f.name for f in source.files)
    try:
        require_columns(Table({c: np.empty(0) for c in source.columns}), needed, where=where)
    except DataError as exc:
        if source.hints:
            exc.message = f"{exc.message}; {'; '.join(source.hints)}"
            exc.args = (exc.message,)
        raise
    loaded = source.load(list(needed) or source.columns)
    return prepare_table(loaded, needed, dropna=dropna, min_count=min_count)


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
    keep: np.ndarray | None = None
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
        keep = ~loaded.missing[name] if keep is None else keep & ~loaded.missing[name]
    if keep is not None and not keep.all():
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
    for name, kind in needed.items():
        values = columns[name]
        if kind not in ("numeric", "binary") or values.dtype.kind != "f":
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(np.argmax(bad))
            index = at if keep is None else int(np.flatnonzero(keep)[at])
            raise _non_finite(loaded, name, index, values[at], int(bad.sum()))
    return table


def _non_finite(
    loaded: LoadedData, column: str, index: int, value: object, count: int
) -> DataError:
    """Return the error for a non-finite value (inf, -inf) at row ``index`` of the loaded table,
    naming the file, the column and the row within that file (1 = the first data row)."""
    file, row = loaded.locate(index)
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
