"""The app contract: what a federated algorithm supplies, and the plain types it works with.

An app is a stateless object with four hooks; the runtime owns the loop, the processes and the
wire. Nothing here does I/O, and nothing imports another fedflow layer but ``fedflow.errors``.

    coordinator                                   each site (node agent)
    ───────────                                   ──────────────────────
    params = App.parse_params(raw)                params = App.parse_params(raw)
    params = app.resolve(params, schema)
    step = app.start(params, ctx)  ── Continue(payload) ──▶  app.local(table, params, payload, ctx)
    step = app.aggregate(replies, params, ctx) ◀── payload ──┘   (aggregates only, never rows)
    … until step is Done(result)

    app.centralized(pooled_dataframe, params) → the same result from a trusted library

Payloads are dicts of plain values (numbers, strings, lists, dicts) and numpy arrays with numeric,
bool or text dtypes. Results are JSON-ready dicts; regression apps put ``coefficients`` and
``std_errors`` as maps from ``"intercept"`` and each feature name to a number.

A site's local state (if an app needs any between rounds) lives in ``SiteContext.state``; the
coordinator's in ``CoordinatorContext.state``. Files an app wants written at the site itself (for
example per-site projections) go into ``SiteContext.outputs``: the node agent writes them to the
site's own output folder, and they never travel to the coordinator.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import msgspec
import numpy as np

from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "App",
    "ColumnKind",
    "Continue",
    "CoordinatorContext",
    "Done",
    "Params",
    "Payload",
    "SiteContext",
    "SiteInfo",
    "Step",
    "Table",
    "check_columns",
    "check_min_count",
    "merged_columns",
    "require_columns",
]

Payload = dict[str, Any]
ColumnKind = Literal["numeric", "binary", "any"]
"""What a site must hold in a column: numbers, 0/1 numbers, or anything (categories)."""


class Params(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every app's parameters: immutable, typed, unknown keys refused."""


P = TypeVar("P", bound=Params)
_Params = Params  # the base class, for annotations inside App (where ``Params`` is the app's own)


class Table:
    """A site's data: named, equally long numpy columns (numbers as int64/float64, text as object).

    Columns are kept in file order. Rows never leave the site; apps reduce a table to aggregates.
    """

    __slots__ = ("_columns", "_n")

    def __init__(self, columns: Mapping[str, np.ndarray]) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal length: {sorted(lengths)}")
        self._columns = dict(columns)
        self._n = lengths.pop() if lengths else 0

    @property
    def columns(self) -> list[str]:
        """The column names, in file order."""
        return list(self._columns)

    @property
    def n_rows(self) -> int:
        """The number of rows."""
        return self._n

    def __len__(self) -> int:
        return self._n

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def is_numeric(self, name: str) -> bool:
        """Whether the column holds numbers (int, float or bool)."""
        return self._columns[name].dtype.kind in "biuf"

    def matrix(self, names: Sequence[str], *, intercept: bool = False) -> np.ndarray:
        """Return the float64 matrix of ``names`` (rows × columns), with a leading 1s column if asked."""
        cols = [np.asarray(self._columns[n], dtype=np.float64) for n in names]
        if intercept:
            cols.insert(0, np.ones(self._n))
        if not cols:
            return np.empty((self._n, 0))
        return np.column_stack(cols)

    def select(self, rows: np.ndarray) -> Table:
        """Return the table restricted to ``rows`` (a boolean mask or an index array)."""
        return Table({k: v[rows] for k, v in self._columns.items()})

    def to_pandas(self) -> pd.DataFrame:
        """Return a pandas DataFrame (imports pandas; meant for the coordinator and tests)."""
        import pandas as pd

        return pd.DataFrame(self._columns)

    @classmethod
    def from_pandas(cls, frame: pd.DataFrame) -> Table:
        """Build a table from a DataFrame: numeric columns as numbers, the rest as text objects."""
        cols: dict[str, np.ndarray] = {}
        for name in frame.columns:
            series = frame[name]
            if series.dtype.kind in "biuf":
                cols[str(name)] = series.to_numpy()
            else:
                cols[str(name)] = series.astype(str).to_numpy(dtype=object)
        return cls(cols)

    def __repr__(self) -> str:
        return f"Table({self._n} rows × {len(self._columns)} columns: {', '.join(self._columns)})"


@dataclass(frozen=True)
class SiteInfo:
    """What the coordinator knows of a site after the handshake (never rows)."""

    name: str
    rows: int
    columns: dict[str, str]  # name -> "int" | "float" | "str"


@dataclass
class CoordinatorContext:
    """Per-run context handed to ``start`` and ``aggregate`` at the coordinator."""

    sites: dict[str, SiteInfo]
    seed: int | None = None
    min_count: int = 5
    round: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Warnings for the user (e.g. "did not converge"); written to the result and shown."""


@dataclass
class SiteContext:
    """Per-run context handed to ``local`` at a site."""

    site: str
    seed: int | None = None
    min_count: int = 5
    round: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, bytes] = field(default_factory=dict)
    """Files to write into the site's own output folder: name -> content. They stay at the site."""


@dataclass(frozen=True)
class Continue:
    """Another round: send ``payload`` to every site (or ``per_site[name]`` where given)."""

    payload: Payload
    per_site: dict[str, Payload] | None = None


@dataclass(frozen=True)
class Done:
    """The final result (JSON-ready) and optional files for the run directory (name -> bytes)."""

    result: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


Step = Continue | Done


def merged_columns(sites: Mapping[str, SiteInfo]) -> dict[str, str]:
    """Return every column any site holds (first site's order first) with its widest kind:
    ``int`` where every holder has integers, ``float`` where all are numeric, else ``str``.

    Apps resolve defaults against this; the runtime then checks each site holds what the app
    needs, so a column missing at one site is reported with that site's name.
    """
    kinds: dict[str, list[str]] = {}
    for info in sites.values():
        for column, kind in info.columns.items():
            kinds.setdefault(column, []).append(kind)
    merged: dict[str, str] = {}
    for column, seen in kinds.items():
        numeric = all(k in ("int", "float") for k in seen)
        merged[column] = ("int" if all(k == "int" for k in seen) else "float") if numeric else "str"
    return merged


def require_columns(table: Table, names: Iterable[str], *, where: str) -> None:
    """Raise DataError naming ``where`` (e.g. the site's files) for the first absent column."""
    for name in names:
        if name not in table:
            raise DataError(
                f"column '{name}' is missing in {where} (columns there: {', '.join(table.columns)})",
                column=name,
            )


def check_columns(
    table: Table, needed: Mapping[str, ColumnKind], *, min_count: int, where: str
) -> None:
    """Check a site's table against what an app needs, as every site does before computing.

    Raises DataError for an absent column, text where numbers are needed, values other than 0/1
    in a binary column, or fewer than ``min_count`` rows.
    """
    require_columns(table, needed, where=where)
    for name, kind in needed.items():
        if kind in ("numeric", "binary") and not table.is_numeric(name):
            raise DataError(f"column '{name}' is not numeric in {where}", column=name)
        if kind == "binary" and not np.isin(table[name], (0, 1)).all():
            raise DataError(f"column '{name}' must hold only 0 and 1 in {where}", column=name)
    if table.n_rows < min_count:
        raise DataError(
            f"{table.n_rows} usable row(s) in {where}, fewer than min_count = {min_count}; "
            "the site refuses to answer"
        )


def check_min_count(count: float, min_count: int, what: str) -> None:
    """Raise DataError when an aggregate would cover fewer than ``min_count`` records."""
    if count < min_count:
        raise DataError(
            f"{what} covers {int(count)} records, fewer than min_count = {min_count}; "
            "the site refuses to answer"
        )


class App(ABC, Generic[P]):
    """Base class of federated apps. Subclasses set ``name`` and ``Params`` and the hooks.

    ``tolerance`` is the relative difference allowed between the federated result and the
    centralized reference; exact algorithms keep the default 1e-8.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    reference: ClassVar[str] = ""
    """The library (and routine) of the centralized twin, e.g. ``"statsmodels OLS"``."""
    tolerance: ClassVar[float] = 1e-8
    absolute_tolerance: ClassVar[float] = 1e-12
    """Absolute difference always accepted (results that should be 0 come out as 1e-17)."""

    # -- parameters ---------------------------------------------------------------------------
    @classmethod
    def parse_params(cls, raw: Mapping[str, Any] | None) -> P:
        """Return validated parameters; raise AppError naming the key (and the closest valid one)."""
        try:
            return msgspec.convert(dict(raw or {}), cls.Params)  # type: ignore[return-value]
        except msgspec.ValidationError as exc:
            raise AppError(_explain(cls, str(exc))) from None
        except (TypeError, ValueError) as exc:  # raised by a Params.__post_init__
            raise AppError(f"app '{cls.name}': {exc}") from None

    @staticmethod
    def params_to_dict(params: _Params) -> dict[str, Any]:
        """Return parameters as plain builtins (for the wire, the manifest and result.json)."""
        return msgspec.to_builtins(params)  # type: ignore[no-any-return]

    def resolve(self, params: P, columns: Mapping[str, str]) -> P:
        """Fill defaults that depend on the data (``columns``: name -> kind, common to all sites).

        Default: return ``params`` unchanged. Raise AppError/DataError for impossible choices.
        """
        return params

    def columns(self, params: P) -> dict[str, ColumnKind]:
        """Return the columns every site must hold, and what they must hold."""
        return {}

    # -- coordinator ----------------------------------------------------------------------------
    def start(self, params: P, ctx: CoordinatorContext) -> Step:
        """Return the first step (usually ``Continue`` with the first round's payload)."""
        return Continue({})

    @abstractmethod
    def aggregate(self, replies: Mapping[str, Payload], params: P, ctx: CoordinatorContext) -> Step:
        """Combine the sites' replies (site name -> payload) into the next step."""

    # -- site -----------------------------------------------------------------------------------
    @abstractmethod
    def local(self, data: Table, params: P, payload: Payload, ctx: SiteContext) -> Payload:
        """Compute this site's aggregates for one round; never return rows."""

    # -- reference ------------------------------------------------------------------------------
    @abstractmethod
    def centralized(self, pooled: pd.DataFrame, params: P) -> dict[str, Any]:
        """Return the same result computed on pooled data by an independent, trusted library."""

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Return the part of a result that ``--compare`` checks (default: all of it)."""
        return dict(result)


_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`(?: - at `\$(.*)`)?")
_AT = re.compile(r"^(.*) - at `\$(.*)`$")


def _explain(app: type[App[Any]], message: str) -> str:
    prefix = f"app '{app.name}': params"
    unknown = _UNKNOWN.match(message)
    if unknown:
        key = unknown.group(1)
        valid = [f for f in app.Params.__struct_fields__]
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
        return f"{prefix}: unknown key '{key}'{hint}"
    located = _AT.match(message)
    if located:
        what, where = located.groups()
        return f"{prefix}{where}: {what[0].lower()}{what[1:]}"
    return f"{prefix}: {message}"
