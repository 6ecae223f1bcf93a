"""A site's data: CSV, TSV and Parquet files (several, or globs) and SQL queries, read with pyarrow.

Two steps, so that a site holds only what an app needs:

- **open** (at ``Setup``): ``open_files`` reads each file's row count (Parquet: from its
  footer; CSV: counting lines, one read of the file) and its column names and kinds (Parquet:
  from the file's schema; CSV: typed from the first 4 MiB, without a full parse). Nothing is
  kept.
- **fingerprint** (from ``Setup`` on, while the site reads): ``FileSource.start_fingerprints``
  hashes every file's bytes (sha256 of the whole file) in a background thread, so the hash
  overlaps with Prepare and the app's first pass instead of being a pass of its own before
  Setup's reply (``hashlib`` and file reads release the GIL; the bytes the app read a moment
  ago come from the OS page cache). ``fingerprints()`` waits for it: the site agent calls it
  before its first reply that carries a result, so no result leaves a site whose files' hashes
  are unknown, and sends them with its last reply (``Bye``). The thread compares each file's
  size, modification time and inode with Setup's before and after hashing it, and every pass
  over a file compares them before and after reading it: a file that changed between Setup and
  the end of a pass is refused (DataError naming it), never hashed as other bytes than the ones
  the app read. ``fingerprints(wait=False)`` returns what is known (None for a hash not
  complete) and stops the thread: what a site that ends early reports.
- **load** (at ``Prepare``), for apps with ``streaming = False``: ``Source.load(names)`` reads
  only the columns named, straight into numpy (numbers as int64/float64, text as object arrays
  built from dictionary-encoded categories, so each distinct label is one Python string);
  ``prepare_table`` then checks them. The agent refuses such an app beforehand when the columns
  as float64 exceed the site's ``memory_limit``.
- **stream** (at ``Prepare``), for apps with ``streaming = True``: ``prepare_streamed`` reads the
  needed columns once, batch by batch, typing and checking each batch as ``prepare_table`` types
  and checks the whole table (same dropna rule, same one-line errors naming file, column and
  row, raised at the end of the pass in the same order), and counts the usable rows
  (``n_rows``). A column whose later rows are wider than Setup's sample saw (integers, then a
  decimal or a missing value; numbers, then text) restarts the pass with the wider kind, so
  every batch is typed as the whole column is. The ``StreamedTable`` it returns re-reads the
  source at each ``batches(names, rows)`` call (pyarrow's streaming CSV reader, Parquet row
  groups, the query's cursor), yielding tables of exactly ``rows`` rows (the last one
  shorter; views of the record batches read, float columns without nulls being read-only
  views of pyarrow's buffers, except where a table straddles two record batches). Before each
  file is read again, its size, modification time and inode are compared with Setup's; a file
  that changed (or now holds other rows) is refused.

  *Parquet checks ride on the first pass.* For Parquet files whose needed columns are numbers
  in their schema, without ``dropna`` and with at least ``min_count`` rows, the site agent
  asks ``prepare_streamed(..., defer=True)``: Prepare reads only the schema and row count, and
  the app's first pass of ``batches`` checks every value (a pass less over the file: 4.8 s of
  about 19 s for 100M rows here). A batch holding a refused value is not yielded: the pass
  reads on to the end and raises Prepare's error (same counts and first row), and the agent
  calls ``ensure_checked`` before any reply, so nothing leaves the site unchecked.

  *CSV and TSV are cached.* Re-parsing text costs a full parse per pass (3.1 s per pass for
  1,000,000 rows × 6 columns here, against 0 s to slice cached columns), and iterative apps make
  many passes. So when the files include delimited text and every needed column is numbers,
  the first pass keeps them as int64/float64 arrays (8 bytes per value), if they fit in
  ``memory_limit``; otherwise, and for Parquet and queries (decoded, not parsed: fast to
  re-read), every pass re-streams and the site holds one batch at a time.

  *Whole columns are refused.* ``data[name]``, ``data.matrix``, ``data.select`` and
  ``to_pandas`` on a ``StreamedTable`` raise AppError (a streaming app reads rows only through
  ``batches``): a streaming app that quietly held whole columns would pass its tests on small
  files and fail on a cohort. ``columns``, ``n_rows``, ``is_numeric`` and ``in`` work.

No data path imports pandas: Arrow arrays become numpy through their buffers (``to_numpy``,
``nulls``), and text arrays are built from buffers; pyarrow's own ``to_numpy``, ``pa.array`` on
Python objects and ``pa.scalar`` import it (0.45 s at every site).

Typing rules (those of the former csv-module loader, kept exactly): cells are stripped; a cell in
``NA_VALUES`` is missing; a column is int64 when every cell is an integer literal and none is
missing, float64 when every present cell is a number, else text. Across files, typed columns
concatenate as they are; as soon as one file holds text, the whole column is typed as text. Every
error is one line naming the site, the file, the column and, where it has one, the row.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import hashlib
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedflow.apps.base import BATCH_ROWS, Table, check_columns, require_columns
from fedflow.errors import AppError, DataError

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
    "StreamedTable",
    "nulls",
    "prepare_streamed",
    "to_numpy",
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


_NUMPY = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float16(): np.float16,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return a numeric or boolean Arrow array's values as a new numpy array, read from its
    buffers (``Array.to_numpy`` imports pandas on first use: 0.45 s in every site). Values under
    a null are whatever the buffer holds: see ``nulls``."""
    if isinstance(array, pa.ChunkedArray):
        parts = [to_numpy(chunk) for chunk in array.chunks]
        if parts:
            return np.concatenate(parts)
        return np.zeros(0, dtype=bool if pa.types.is_boolean(array.type) else _NUMPY[array.type])
    n, offset = len(array), array.offset
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):
        return _bits(data, offset, n)
    dtype = np.dtype(_NUMPY[array.type])
    if data is None or n == 0:
        return np.zeros(n, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset * dtype.itemsize).copy()


def _float_view(array: pa.Array) -> np.ndarray:
    """Return a float64 Arrow array's values as a read-only numpy view of its buffer (no copy;
    the view keeps the buffer alive)."""
    data = array.buffers()[1]
    n = len(array)
    if data is None or n == 0:
        return np.zeros(n)
    values = np.frombuffer(data, dtype=np.float64, count=n, offset=array.offset * 8)
    values.flags.writeable = False
    return values


def _all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite, from their sum (one read, no mask): a NaN or an infinity
    makes the sum non-finite. A non-finite sum of finite values (overflow) returns False, and
    the caller then looks at each value."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(values)))


def nulls(array: pa.Array) -> np.ndarray:
    """Return the mask of an Arrow array's nulls, read from its validity bitmap."""
    validity = array.buffers()[0]
    if array.null_count == 0 or validity is None:
        return np.zeros(len(array), dtype=bool)
    return ~_bits(validity, array.offset, len(array))


def _bits(buffer: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    """Return ``n`` bits of an Arrow bitmap from bit ``offset`` as booleans."""
    if buffer is None or n == 0:
        return np.zeros(n, dtype=bool)
    first, last = offset // 8, (offset + n + 7) // 8
    raw = np.frombuffer(buffer, dtype=np.uint8, count=last - first, offset=first)
    return np.unpackbits(raw, bitorder="little")[offset % 8 : offset % 8 + n].astype(bool)


_NA = _strings(sorted(NA_VALUES))
_EMPTY = _strings([""])[0]
"""The empty text cell (``fill_null("")`` would build it through pandas at every call)."""
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = {".parquet", ".pq"}
_HASH_CHUNK = 1 << 17
"""Bytes read and hashed at a time by a source's fingerprint thread: a chunk that stays in the
core's cache between the copy from the page cache and the hash (the sha256 of a 5 GB file took
3.9 s in 128 KiB chunks here, 5.3 s in 1 MiB chunks)."""
_BLOCK = 1 << 17
"""Bytes of a CSV block: pyarrow's streaming reader holds many blocks ahead, so 1 MiB blocks
added 60 MB to a site's peak (128 KiB: 20 MB), for the same CPU time."""
_SAMPLE = 1 << 22
"""Bytes of a CSV file typed at Setup to report its columns' kinds."""
_BATCH = 1 << 18
"""Rows of a Parquet record batch: larger batches cost less Python per row (about 12 MB for
six float columns)."""
_FINITE = np.zeros(_BATCH, dtype=bool)
_FINITE.flags.writeable = False
"""The missing-value mask of a float column that ``typed_pieces`` found all finite: views of
this one read-only array (no allocation), which tell ``_Plan._usable`` that those values were
checked already (``_known_finite``): a sum per column per batch instead of two."""


def _finite_mask(rows: int) -> np.ndarray:
    """The mask of ``rows`` values with none missing, for values checked finite."""
    return _FINITE[:rows] if rows <= len(_FINITE) else np.zeros(rows, dtype=bool)


def _known_finite(missing: np.ndarray) -> bool:
    """Whether ``missing`` is ``_finite_mask``'s: its values were checked finite."""
    return missing.base is _FINITE


_PARQUET_BUFFER = 1 << 17
"""Bytes a Parquet column chunk is read in, as a stream (decoded while it is read, in cache): a
100M-row file of six floats was read in 1.1-1.2 s wall and 2.0-2.2 s CPU so, against 1.6-2.2 s
and 2.2-3.1 s a column chunk at a time."""
_ROW_GROUP_BYTES = 1 << 27
"""Parquet row groups up to this size (decoded, all columns) are read whole, larger ones in
batches, so a site holds at most about this much of a file at once."""
_INTEGER = r"^[+-]?[0-9]+$"


@dataclass(frozen=True)
class FileFingerprint:
    name: str
    sha256: str | None
    """The hex sha256 of the file's bytes (of a query's canonical result); None while the
    site's fingerprint thread has not finished it (see ``Source.fingerprints``)."""
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

    def stream(self, names: list[str], text: set[str]) -> Iterator[Batch]:
        """Yield the columns ``names`` one record batch at a time, re-read from the source
        (``text``: columns delimited files read as text cells). Raises DataError for data that
        changed since Setup."""
        raise AppError(f"{type(self).__name__} cannot stream its rows")

    @property
    def reparses(self) -> bool:
        """Whether each pass parses text (CSV, TSV): streaming caches the columns then."""
        return False

    def start_fingerprints(self) -> None:
        """Start hashing the source's bytes in the background (files; a query's result and
        data in memory are hashed when opened)."""
        return None

    def fingerprints(
        self, *, wait: bool = True, timeout: float | None = None
    ) -> list[FileFingerprint]:
        """Return ``files`` with their sha256. ``wait``: until every hash is complete (raises
        DataError for a file that changed since Setup), or ``timeout`` seconds, then as without
        it; else what is known now (None for the rest) and stop hashing."""
        return self.files


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
Part: TypeAlias = "tuple[int, dict[str, Piece]]"
"""One record batch of a file or query: its rows and its columns' pieces."""


@dataclass(frozen=True)
class Batch:
    """One record batch of a source in a streaming pass."""

    file: int
    """The index of its file in ``Source.files``."""
    start: int
    """Its first row in that file (0 = the file's first data row)."""
    rows: int
    pieces: dict[str, Piece]


class _File(ABC):
    """One data file: fingerprint, column names and kinds, and how to read some columns."""

    path: Path
    fingerprint: FileFingerprint
    kinds: dict[str, str]
    signature: tuple[int, int, int]
    """The file's size, modification time (ns) and inode when Setup opened it."""

    @abstractmethod
    def stream(self, names: list[str], text: set[str]) -> Iterator[Part]:
        """Yield the named columns' pieces one record batch at a time (``text``: delimited
        files read those columns as text cells, whatever their Setup kind)."""

    @abstractmethod
    def read(self, names: list[str]) -> dict[str, Piece]:
        """Return the named columns' pieces."""

    def strings(self, name: str) -> pa.Array | None:
        """The column's raw text cells when it must be typed as text with other files."""
        return None

    def check_unchanged(self) -> None:
        """Raise DataError when the file's size, modification time or inode differ from
        Setup's (rewriting a file changes them; its sha256 is not recomputed at every pass)."""
        try:
            now = _signature(self.path)
        except OSError:
            now = None
        if now != self.signature:
            raise self.changed()

    def changed(self) -> DataError:
        name = self.path.name
        return DataError(
            f"{name} changed since the site opened it (size, modification time or inode "
            "differ from Setup's; run the study again)",
            file=name,
        )


def _release_arrow_memory() -> None:
    """Return the memory pyarrow's allocator kept from reading (40 MB after hashing and typing
    a 117 MB CSV file) to the system, so the columns loaded next do not add to it."""
    pa.default_memory_pool().release_unused()


def _signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


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
        self._hasher: _Hasher | None = None

    def start_fingerprints(self) -> None:
        if self._hasher is None:
            self._hasher = _Hasher(self._files)

    def fingerprints(
        self, *, wait: bool = True, timeout: float | None = None
    ) -> list[FileFingerprint]:
        if self._hasher is None:
            if not wait:
                return self.files
            self.start_fingerprints()
        assert self._hasher is not None
        try:
            digests = self._hasher.wait(timeout) if wait else self._hasher.stop()
        except DataError as exc:
            exc.site = self.site
            raise
        out = [dataclasses.replace(f, sha256=d) for f, d in zip(self.files, digests, strict=True)]
        if all(d is not None for d in digests):
            self.files = out
        return out

    def stream(self, names: list[str], text: set[str]) -> Iterator[Batch]:
        for index, file in enumerate(self._files):
            file.check_unchanged()
            at = 0
            for size, pieces in file.stream(names, text):
                if at + size > file.fingerprint.rows:
                    raise changed(file)
                yield Batch(index, at, size, pieces)
                at += size
            if at != file.fingerprint.rows:
                raise changed(file)
            file.check_unchanged()  # the bytes read are those Setup opened (and are hashed)

    @property
    def reparses(self) -> bool:
        return any(isinstance(f, _DelimitedFile) for f in self._files)

    def _load(self, names: list[str]) -> LoadedData:
        parts = []
        for f in self._files:
            f.check_unchanged()
            parts.append(f.read(names))
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
        for f in self._files:  # the bytes read (text cells re-read by _merge too) are Setup's
            f.check_unchanged()
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
    _release_arrow_memory()
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
    ``load``, the files hashed meanwhile); ``row_file`` holds each row's file. Raises DataError
    as ``open_files`` does."""
    source = open_files(paths, site=site, sep=sep, header=header, columns=columns)
    source.start_fingerprints()
    loaded = source.load(source.columns)
    loaded.files = source.fingerprints()
    loaded.row_file = np.repeat(np.arange(len(source.files)), [f.rows for f in source.files])
    return loaded


# -- fingerprints ----------------------------------------------------------------------------
class _Hasher:
    """Hashes a source's files, one after the other, in a background thread (see module)."""

    def __init__(self, files: Sequence[_File]) -> None:
        self._files = list(files)
        self._digests: list[str | None] = [None] * len(self._files)
        self._error: DataError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedflow-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for index, file in enumerate(self._files):
            try:
                digest = _hash_file(file, self._stop)
            except DataError as exc:
                self._error = exc
                return
            except OSError as exc:
                name = file.path.name
                self._error = DataError(
                    f"cannot read data file {name} to hash it: {exc.strerror or exc}", file=name
                )
                return
            except Exception as exc:  # never a hash that is silently missing
                name = file.path.name
                self._error = DataError(f"cannot hash data file {name}: {exc!r}", file=name)
                return
            if digest is None:  # stopped
                return
            self._digests[index] = digest

    def wait(self, timeout: float | None = None) -> list[str | None]:
        """Return every file's sha256 once all are hashed (after ``timeout`` s: ``stop()``).
        Raises DataError for a file that changed since Setup or could not be read."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return self.stop()
        if self._error is not None:
            raise self._error
        return list(self._digests)

    def stop(self) -> list[str | None]:
        """Stop hashing; return the hashes complete by now (None for the others)."""
        self._stop.set()
        self._thread.join()
        return list(self._digests)


def _hash_file(file: _File, stop: threading.Event) -> str | None:
    """Return the sha256 of ``file``'s bytes, or None when ``stop`` was set meanwhile. Raises
    DataError when the file's size, modification time or inode differ from Setup's before or
    after it is read, or it holds another number of bytes."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(file.path, "rb", buffering=0) as f:
        if _fstat_signature(f.fileno()) != file.signature:
            raise file.changed()
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
            if stop.is_set():
                return None
        if _fstat_signature(f.fileno()) != file.signature or size != file.signature[0]:
            raise file.changed()
    file.check_unchanged()  # and the path still names that file
    return digest.hexdigest()


def _fstat_signature(fd: int) -> tuple[int, int, int]:
    stat = os.fstat(fd)
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


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
        self.signature = _signature(path)
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
        rows = self._count()
        self.fingerprint = FileFingerprint(path.name, None, self.signature[0], rows)
        self.kinds = self._sample_kinds() if rows else dict.fromkeys(self.names, "str")

    def _options(
        self, include: Sequence[str], types: Mapping[str, pa.DataType], threads: bool
    ) -> dict[str, Any]:
        return {
            "read_options": pacsv.ReadOptions(
                column_names=self.names,
                skip_rows=1 if self.header else 0,
                block_size=_BLOCK,
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

    def _count(self) -> int:
        """Stream the file once: its rows. Without quotes (which may hold line breaks) and lone
        carriage returns, rows are the non-empty lines, counted as the bytes stream by;
        otherwise the CSV reader counts them, checking each line's fields."""
        lines = blank = 0
        simple = True
        pending = 0  # bytes of the current line in earlier chunks
        pending_cr = False  # ... and they are one carriage return
        with self.path.open("rb") as f:
            while chunk := f.read(1 << 22):
                if b'"' in chunk or chunk.count(b"\r") != chunk.count(b"\r\n"):
                    simple = False  # the CSV reader counts the rows
                    break
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
            return lines - blank - (1 if self.header else 0)
        rows = 0
        first = self.names[0]
        for batch in self._stream(str(self.path), [first], {first: pa.string()}, threads=False):
            rows += batch.num_rows
        return rows

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

    def stream(self, names: list[str], text: set[str]) -> Iterator[Part]:
        """Yield the named columns batch by batch: columns this file's Setup typed as floats
        straight as float64 (unless in ``text``), the others as stripped text cells. A float
        column holding something else raises ``_Retype``."""
        as_text = {n for n in names if self.kinds.get(n) != "float"} | (text & set(names))
        types = {n: pa.string() if n in as_text else pa.float64() for n in names}
        for batch in self._stream(str(self.path), names, types):
            pieces: dict[str, Piece] = {}
            for n in names:
                column = batch.column(n)
                if n in as_text:
                    pieces[n] = pc.utf8_trim_whitespace(column)
                else:
                    pieces[n] = (to_numpy(column), nulls(column))
            yield batch.num_rows, pieces

    def read(self, names: list[str]) -> dict[str, Piece]:
        text: set[str] = set()
        while True:
            try:
                return _collect(self.stream(names, text), names, self.fingerprint.rows, self)
            except _Retype as exc:
                if exc.name in text:
                    raise DataError(f"{self.path.name}: cannot read column '{exc.name}'") from None
                text.add(exc.name)

    def strings(self, name: str) -> pa.Array | None:
        piece = _collect(self.stream([name], {name}), [name], self.fingerprint.rows, self)[name]
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
        self.signature = _signature(path)
        try:
            # not pre-buffered: reading holds about one row group at a time (pre-buffering held
            # 200 MB after 4 row groups of 1M rows, growing with rows); a row group's columns
            # are decoded on pyarrow's threads
            self.file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
            schema = self.file.schema_arrow
            rows = self.file.metadata.num_rows
        except OSError:
            raise
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise DataError(
                f"{path.name}: not a readable Parquet file ({exc})", file=path.name
            ) from None
        self.types = {str(f.name): f.type for f in schema}
        self.fingerprint = FileFingerprint(path.name, None, self.signature[0], rows)
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
        """Yield the columns ``names`` in record batches of at most ``_BATCH`` rows: a row group
        at a time when it is at most ``_ROW_GROUP_BYTES`` decoded (10M rows × 6 floats in 1M-row
        groups: 0.4 s of CPU against 0.6-0.7 s through ``iter_batches``), else in batches."""
        try:
            meta = self.file.metadata
            for group in range(meta.num_row_groups):
                if meta.row_group(group).total_byte_size > _ROW_GROUP_BYTES:
                    yield from self.file.iter_batches(
                        batch_size=_BATCH, row_groups=[group], columns=names, use_threads=True
                    )
                    continue
                table = self.file.read_row_group(group, columns=names, use_threads=True)
                yield from table.to_batches(max_chunksize=_BATCH)
                del table  # before the next group is read
        except (pa.ArrowInvalid, OSError) as exc:
            name = self.path.name
            raise DataError(f"{name}: not a readable Parquet file ({exc})", file=name) from None

    def stream(self, names: list[str], text: set[str]) -> Iterator[Part]:
        types = {n: self.types[n] for n in names}
        for batch in self._batches(names):
            yield batch.num_rows, typed_pieces(batch, types)

    def read(self, names: list[str]) -> dict[str, Piece]:
        return _collect(self.stream(names, set()), names, self.fingerprint.rows, self)


def typed_pieces(batch: pa.RecordBatch, types: Mapping[str, pa.DataType]) -> dict[str, Piece]:
    """Return the columns ``types`` of a typed record batch (Parquet, SQL): floats (and
    decimals) as float64 with NaN missing, integers and booleans as int64 with the mask of
    nulls, anything else as text cells typed later."""
    pieces: dict[str, Piece] = {}
    for column, kind in types.items():
        array = batch.column(column)
        if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            if array.type != pa.float64():
                array = array.cast(pa.float64())
            if array.null_count:
                values = to_numpy(array)
                values[nulls(array)] = np.nan
            else:  # the common case: the file's buffer itself, not a copy
                values = _float_view(array)
            finite = _all_finite(values)
            missing = _finite_mask(len(values)) if finite else np.isnan(values)
            pieces[column] = (values, missing)
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            pieces[column] = (to_numpy(array).astype(np.int64, copy=False), nulls(array))
        else:
            pieces[column] = _as_strings(array)
    return pieces


def _collect(
    parts: Iterator[Part], names: list[str], rows: int, where: _File | str
) -> dict[str, Piece]:
    """Return whole columns of ``rows`` rows from their batches' pieces. Raises DataError when
    the batches do not hold ``rows`` rows (the data changed since Setup)."""
    typed: dict[str, Typed] = {}
    texts: dict[str, list[pa.Array]] = {n: [] for n in names}
    at = 0
    for size, pieces in parts:
        end = at + size
        if end > rows:
            raise changed(where)
        for name, piece in pieces.items():
            if isinstance(piece, tuple):
                if name not in typed:
                    typed[name] = (np.empty(rows, piece[0].dtype), np.zeros(rows, dtype=bool))
                typed[name][0][at:end] = piece[0]
                typed[name][1][at:end] = piece[1]
            else:
                texts[name].append(piece)
        at = end
    if at != rows:
        raise changed(where)
    out: dict[str, Piece] = {}
    for name in names:
        chunks = texts[name]
        out[name] = (
            typed[name] if name in typed else pa.concat_arrays(chunks) if chunks else _strings([])
        )
    return out


def changed(where: _File | str) -> DataError:
    """Return the error for data that changed since the site opened it at Setup."""
    name = where if isinstance(where, str) else where.path.name
    return DataError(f"{name} changed since the site opened it (its rows differ)", file=name)


def _as_strings(column: pa.Array) -> pa.Array:
    """Return a non-numeric column as text cells (missing as '')."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.cast(pa.string()).fill_null(_EMPTY)
    return _strings(["" if v is None else str(v) for v in column.to_pylist()])


# -- typing ----------------------------------------------------------------------------------
def _as_text(column: Typed) -> pa.Array:
    """Return typed values as the text cells a CSV file would hold (missing as '')."""
    values, missing = column
    integral = values.dtype.kind in "biu"
    return _strings(
        [
            "" if gone else str(int(v)) if integral else repr(float(v))
            for v, gone in zip(values.tolist(), missing.tolist(), strict=True)
        ]
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
    cells = cells.fill_null(_EMPTY)
    n = len(cells)
    gone = pc.is_in(cells, value_set=_NA)
    missing = to_numpy(gone)
    present = cells.filter(pc.invert(gone)) if missing.any() else cells
    if not missing.any() and (
        n == 0 or pc.all(pc.match_substring_regex(present, _INTEGER)).as_py()
    ):
        try:
            unsigned = pc.replace_substring_regex(present, r"^\+", "")
            return to_numpy(pc.cast(unsigned, pa.int64())), missing
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
        return to_numpy(pc.cast(cells, pa.float64()))
    except pa.ArrowInvalid:
        pass
    distinct = pc.unique(cells)
    values = []
    for text in distinct.to_pylist():
        try:
            values.append(float(text))
        except (TypeError, ValueError):
            return None
    index = to_numpy(pc.index_in(cells, value_set=distinct))
    return np.asarray(values, dtype=np.float64)[index]


def _categories(cells: pa.Array, missing: np.ndarray) -> np.ndarray:
    """Return text cells as an object array (None where missing) through their dictionary
    encoding, so each distinct label is one Python string however many rows hold it."""
    encoded = pc.dictionary_encode(cells)
    labels = encoded.dictionary.to_pylist()
    objects = np.empty(len(labels) + 1, dtype=object)
    objects[: len(labels)] = labels
    index = to_numpy(encoded.indices).astype(np.int64)
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
            file, row = loaded.locate(index)
            raise _non_finite(file, row, name, values[at], int(bad.sum()))
    return table


def _non_finite(file: str, row: int, column: str, value: object, count: int) -> DataError:
    """Return the error for a non-finite value (inf, -inf) in ``row`` of ``file`` (1 = its first
    data row), naming the file, the column and the row."""
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


# -- streaming --------------------------------------------------------------------------------
def prepare_streamed(
    source: Source,
    needed: Mapping[str, str],
    *,
    dropna: bool,
    min_count: int,
    memory_limit: int,
    defer: bool = False,
) -> StreamedTable:
    """Check a site's rows for a streaming app in one pass, and return the table whose
    ``batches`` re-read them (see ``StreamedTable``). The checks and their one-line errors are
    ``prepare_table``'s. Raises DataError naming the site, file, column and row.

    With ``defer`` (the site agent's choice), the pass is saved where it can be: Parquet files
    whose needed columns are numbers in their schema, without ``dropna`` (every row is then
    usable: ``n_rows`` is the files' row count) and with at least ``min_count`` rows. The
    per-value checks (missing values, 0/1, infinities) are then made by the first pass of
    ``batches`` over all the needed columns, with the same errors raised at its end, and
    ``StreamedTable.ensure_checked`` makes them (by a pass of its own if no pass has completed)
    before the site sends any reply."""
    try:
        return _prepare_streamed(source, needed, dropna, min_count, memory_limit, defer)
    except DataError as exc:
        exc.site = source.site
        raise


def _prepare_streamed(
    source: Source,
    needed: Mapping[str, str],
    dropna: bool,
    min_count: int,
    memory_limit: int,
    defer: bool = False,
) -> StreamedTable:
    where = ", ".join(f.name for f in source.files)
    try:
        require_columns(Table({c: np.empty(0) for c in source.columns}), needed, where=where)
    except DataError as exc:
        if source.hints:
            exc.message = f"{exc.message}; {'; '.join(source.hints)}"
            exc.args = (exc.message,)
        raise
    wanted = dict(needed) or dict.fromkeys(source.columns, "any")
    names = [c for c in source.kinds if c in wanted]
    plan = _Plan(source, wanted, {n: source.kinds[n] for n in names}, dropna)
    if defer and plan.deferrable(min_count):
        return StreamedTable(plan, source.rows, None, (where, min_count))
    found, cache = _check_pass(plan, where, min_count, memory_limit)
    return StreamedTable(plan, found.rows, cache)


def _check_pass(
    plan: _Plan, where: str, min_count: int, memory_limit: int
) -> tuple[_Findings, dict[str, np.ndarray] | None]:
    """Make Prepare's pass: type and check every needed value, raise the first error
    ``prepare_table`` would raise; return what it found and the cached columns (or None)."""
    while True:  # a batch holding a wider kind than Setup's sample saw restarts the pass
        cache = plan.cache_columns(memory_limit)
        found = _Findings()
        try:
            at = 0
            for rows, columns in plan.rows(found):
                if cache is not None:
                    for name, values in columns.items():
                        cache[name][at : at + rows] = values
                at += rows
        except _Widen as exc:
            plan.widen(exc.name, exc.kind)
            continue
        found.raise_first(plan, where, min_count)
        _release_arrow_memory()
        if cache is not None:
            cache = {n: values[: found.rows] for n, values in cache.items()}
        return found, cache


class _Widen(Exception):
    """A batch holds a wider kind (int < float < str) than assumed for its column."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__(name)
        self.name, self.kind = name, kind


_ORDER = {"int": 0, "float": 1, "str": 2}


@dataclass
class _Findings:
    """What a pass found, raised at its end in the order ``prepare_table`` checks."""

    rows: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    first_missing: dict[str, str] = field(default_factory=dict)
    not_numeric: dict[str, object] = field(default_factory=dict)
    not_binary: set[str] = field(default_factory=set)
    non_finite: dict[str, tuple[str, int, object]] = field(default_factory=dict)
    non_finite_count: dict[str, int] = field(default_factory=dict)

    def refuses(self, dropna: bool) -> bool:
        """Whether ``raise_first`` will raise for a value found so far (not for too few rows)."""
        missing = not dropna and any(self.missing.values())
        return bool(missing or self.not_numeric or self.not_binary or self.non_finite)

    def raise_first(self, plan: _Plan, where: str, min_count: int) -> None:
        if not plan.dropna:
            for name in plan.kinds:
                if self.missing.get(name):
                    first = self.first_missing[name]
                    raise DataError(
                        f"{first}: column '{name}' has {self.missing[name]} missing value(s) "
                        "(set dropna = true in the study to drop those rows)",
                        file=first,
                        column=name,
                    )
        for name in plan.needed:
            if name in self.not_numeric:
                raise DataError(
                    f"column '{name}' is not numeric in {where} "
                    f"(e.g. value {self.not_numeric[name]!r})",
                    column=name,
                )
        for name in plan.needed:
            if name in self.not_binary:
                raise DataError(f"column '{name}' must hold only 0 and 1 in {where}", column=name)
        if self.rows < min_count:
            raise DataError(
                f"{self.rows} usable row(s) in {where}, fewer than min_count = {min_count}; "
                "the site refuses to answer"
            )
        for name in plan.needed:
            if name in self.non_finite:
                file, row, value = self.non_finite[name]
                raise _non_finite(file, row, name, value, self.non_finite_count[name])


class _Plan:
    """How a pass reads and types a site's needed columns: each column's kind over all its
    rows (Setup's, widened when a pass meets wider values) and which are read as text."""

    def __init__(
        self, source: Source, needed: Mapping[str, str], kinds: dict[str, str], dropna: bool
    ) -> None:
        self.source, self.needed, self.kinds, self.dropna = source, needed, kinds, dropna
        self.text = {n for n, kind in kinds.items() if kind == "str"}

    def widen(self, name: str, kind: str) -> None:
        self.kinds[name] = kind
        if kind == "str":
            self.text.add(name)

    def deferrable(self, min_count: int) -> bool:
        """Whether the per-value checks can wait for the first pass of ``batches``: Parquet
        files only, every needed column numbers in their schema (no text to type, so no pass
        widens a kind), no ``dropna`` (every row usable) and at least ``min_count`` rows."""
        source = self.source
        return (
            not self.dropna
            and isinstance(source, FileSource)
            and all(isinstance(f, _ParquetFile) for f in source._files)
            and all(kind in ("int", "float") for kind in self.kinds.values())
            and source.rows >= min_count
        )

    def cache_columns(self, memory_limit: int) -> dict[str, np.ndarray] | None:
        """Return empty arrays to hold the needed columns when each pass would parse text and
        every column is numbers within ``memory_limit`` bytes, else None (re-stream)."""
        rows = self.source.rows
        numbers = all(
            kind != "str" or self.needed[name] in ("numeric", "binary")
            for name, kind in self.kinds.items()
        )
        if not self.source.reparses or not numbers or rows * len(self.kinds) * 8 > memory_limit:
            return None
        return {
            n: np.empty(rows, dtype=np.int64 if kind == "int" else np.float64)
            for n, kind in self.kinds.items()
        }

    def rows(self, found: _Findings) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield each batch's usable rows, typed as loading the whole table types them, and
        record in ``found`` what ``prepare_table`` would refuse."""
        names = list(self.kinds)
        try:
            for batch in self.source.stream(names, set(self.text)):
                yield self._usable(batch, found)
        except _Retype as exc:  # a column Setup's sample saw as floats holds other text
            self.text.add(exc.name)
            raise _Widen(exc.name, self.kinds[exc.name]) from None

    def _usable(self, batch: Batch, found: _Findings) -> tuple[int, dict[str, np.ndarray]]:
        file = self.source.files[batch.file].name
        typed = {n: _as_kind(batch.pieces[n], kind, n) for n, kind in self.kinds.items()}
        keep: np.ndarray | None = None
        for name, (_, missing) in typed.items():
            if _known_finite(missing):
                continue
            count = int(np.count_nonzero(missing))
            if count:
                found.missing[name] = found.missing.get(name, 0) + count
                found.first_missing.setdefault(name, file)
                keep = ~missing if keep is None else keep & ~missing
        if not self.dropna:
            keep = None  # refused at the end of the pass when a needed column has a missing value
        columns = {n: values if keep is None else values[keep] for n, (values, _) in typed.items()}
        for name, kind in self.needed.items():
            if kind not in ("numeric", "binary"):
                continue
            values = columns[name]
            if values.dtype.kind == "O":
                try:
                    values = columns[name] = values.astype(np.float64)
                except (TypeError, ValueError):
                    example = next((v for v in values if not _is_number(v)), "?")
                    found.not_numeric.setdefault(name, example)
                    continue
            if kind == "binary" and not np.isin(values, (0, 1)).all():
                found.not_binary.add(name)
            checked = _known_finite(typed[name][1])
            if values.dtype.kind == "f" and not checked and not _all_finite(values):
                bad = ~np.isfinite(values)
                if bad.any():
                    at = int(np.argmax(bad))
                    index = at if keep is None else int(np.flatnonzero(keep)[at])
                    found.non_finite.setdefault(name, (file, batch.start + index + 1, values[at]))
                    found.non_finite_count[name] = found.non_finite_count.get(name, 0) + int(
                        bad.sum()
                    )
        rows = batch.rows if keep is None else int(keep.sum())
        found.rows += rows
        return rows, columns


def _as_kind(piece: Piece, kind: str, name: str) -> Typed:
    """Return one batch's piece of a column typed as ``kind`` (the column's kind over all its
    rows), as loading the whole table would type these rows. Raises ``_Widen`` for a piece of a
    wider kind."""
    if isinstance(piece, tuple):
        values, missing = piece
        own = "float" if values.dtype.kind == "f" or missing.any() else "int"
        if _ORDER[own] > _ORDER[kind]:
            raise _Widen(name, own)
        if kind == "str":  # numbers of a typed file in a column another file holds as text
            return _categories(_as_text(piece), missing), missing
        if kind == "float":
            gone = not _known_finite(missing) and missing.any()
            if values.dtype != np.float64 or (gone and not values.flags.writeable):
                values = values.astype(np.float64)
            if gone:
                values[missing] = np.nan
        return values, missing
    if kind == "str":
        cells = piece.fill_null(_EMPTY)
        missing = to_numpy(pc.is_in(cells, value_set=_NA))
        return _categories(cells, missing), missing
    values, missing = type_strings(piece)
    own = column_kind(values)
    if _ORDER[own] > _ORDER[kind]:
        raise _Widen(name, own)
    return values.astype(np.float64 if kind == "float" else np.int64, copy=False), missing


class StreamedTable(Table):
    """A site's needed columns for a streaming app: ``batches`` re-reads the rows from the
    site's source at every call (or slices the cached columns), typed and checked as at
    ``Prepare``; ``n_rows`` is the usable rows. Whole-column accessors raise AppError."""

    __slots__ = ("_plan", "_cache", "_pending")

    def __init__(
        self,
        plan: _Plan,
        rows: int,
        cache: dict[str, np.ndarray] | None,
        pending: tuple[str, int] | None = None,
    ) -> None:
        super().__init__({})
        self._n = rows
        self._plan = plan
        self._cache = cache
        self._pending = pending
        """While the per-value checks wait for a complete pass (``prepare_streamed`` with
        ``defer``): the files' names and ``min_count`` for their errors; None once checked."""

    @property
    def checked(self) -> bool:
        """Whether every needed value has been checked (at Prepare, or by a complete pass)."""
        return self._pending is None

    def ensure_checked(self) -> None:
        """Check every needed value now if no pass has completed yet (one pass of its own).
        Raises DataError as ``prepare_streamed`` does. The site calls it before any reply."""
        if self._pending is not None:
            for _ in self._pass():
                pass

    @property
    def columns(self) -> list[str]:
        return list(self._plan.kinds)

    @property
    def cached(self) -> bool:
        """Whether the columns are held in memory (delimited files within the memory limit)."""
        return self._cache is not None

    def __contains__(self, name: object) -> bool:
        return name in self._plan.kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._plan.kinds)

    def is_numeric(self, name: str) -> bool:
        return self._plan.kinds[name] != "str" or self._plan.needed[name] in ("numeric", "binary")

    def batches(
        self, names: Sequence[str] | None = None, rows: int = BATCH_ROWS
    ) -> Iterator[Table]:
        if rows < 1:
            raise ValueError("rows must be at least 1")
        chosen = self.columns if names is None else list(names)
        for name in chosen:
            if name not in self._plan.kinds:
                raise KeyError(f"no column {name!r}")
        if self._cache is not None:
            yield from Table({n: self._cache[n] for n in chosen}).batches(chosen, rows)
            return
        yield from _rebatch(self._pass(), chosen, rows)

    def _pass(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield the usable rows of one pass. While the checks are pending, a batch holding a
        value Prepare would refuse is not yielded: the pass reads on, without yielding, to the
        end, and raises the error Prepare would have raised (counts and first row included)."""
        found = _Findings()
        plan = self._plan
        source = plan.source
        pending = self._pending
        try:
            parts = plan.rows(found)
            for part in parts:
                if pending is not None and found.refuses(plan.dropna):
                    for _ in parts:  # the whole-column counts of the error
                        pass
                    break
                yield part
            if pending is not None:
                found.raise_first(plan, *pending)
        except _Widen:
            error = changed(", ".join(f.name for f in source.files))
            if pending is not None:  # a kind the schema did not give: Prepare's own pass
                try:
                    _check_pass(plan, *pending, memory_limit=0)
                except DataError as exc:
                    error = exc
            error.site = source.site
            raise error from None
        except DataError as exc:
            exc.site = source.site
            raise
        if found.rows != self._n:
            raise changed(", ".join(f.name for f in source.files))
        self._pending = None

    def _whole(self, what: str) -> AppError:
        return AppError(
            f"a streaming app reads the site's rows only through data.batches(names, rows); it "
            f"asked for {what} (an app that needs whole columns sets streaming = False)"
        )

    def __getitem__(self, name: str) -> np.ndarray:
        raise self._whole(f"the whole column '{name}'")

    def matrix(self, names: Sequence[str], *, intercept: bool = False) -> np.ndarray:
        raise self._whole(f"the matrix of {', '.join(names)}")

    def select(self, rows: np.ndarray) -> Table:
        raise self._whole("a selection of rows")

    def to_pandas(self) -> Any:
        raise self._whole("a DataFrame")

    def __repr__(self) -> str:
        how = "cached" if self._cache is not None else "re-read at each pass"
        return f"StreamedTable({self._n} rows × {len(self._plan.kinds)} columns, {how})"


def _rebatch(
    parts: Iterator[tuple[int, dict[str, np.ndarray]]], names: list[str], rows: int
) -> Iterator[Table]:
    """Yield the rows of ``parts`` as tables of exactly ``rows`` rows (the last one shorter).

    A table within one part is a view of it; only a table straddling parts is copied (one
    per part boundary, e.g. where a Parquet row group ends), never the rows held back."""
    pending: list[dict[str, np.ndarray]] = []
    sizes: list[int] = []
    held = 0
    for size, columns in parts:
        if not size:
            continue
        pending.append({n: columns[n] for n in names})
        sizes.append(size)
        held += size
        while held >= rows:
            yield Table(_take(pending, sizes, names, rows))
            held -= rows
    if held:
        yield Table(_take(pending, sizes, names, held))


def _take(
    pending: list[dict[str, np.ndarray]], sizes: list[int], names: list[str], rows: int
) -> dict[str, np.ndarray]:
    """Remove the first ``rows`` rows from ``pending`` (parts of ``sizes`` rows) and return
    them: views of the first part when it holds them all, else joined."""
    if sizes[0] >= rows:
        first = pending[0]
        out = {n: first[n][:rows] for n in names}
        if sizes[0] == rows:
            del pending[0], sizes[0]
        else:
            pending[0] = {n: first[n][rows:] for n in names}
            sizes[0] -= rows
        return out
    chunks: list[dict[str, np.ndarray]] = []
    wanted = rows
    while wanted:
        step = min(wanted, sizes[0])
        chunks.append(_take(pending, sizes, names, step))
        wanted -= step
    return {n: np.concatenate([c[n] for c in chunks]) for n in names}
