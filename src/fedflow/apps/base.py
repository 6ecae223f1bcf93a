"""The app contract: what a federated algorithm supplies, and the plain types it works with.

An app is a short conversation of named **phases**. Each phase declares the payload type sent to
the sites and the one each site returns (msgspec structs); the app implements one method pair per
phase. The runtime's one round driver owns the loop, the processes and the wire. Nothing here does
I/O, and nothing imports another fedflow layer but ``fedflow.errors``.

    coordinator (driver)                            each site (node agent)
    ────────────────────                            ──────────────────────
    params = app.resolve(App.parse_params(raw), columns)
    app.columns(params)          ── Prepare ──▶      check the columns, min_count
    step = app.start(params, ctx)
    Continue("moments", request) ── Task ──▶         app.local_moments(table, params, request, ctx)
    step = app.aggregate_moments(replies, params, ctx) ◀── reply payload (aggregates, never rows)
    … Continue("lloyd", …) … until step is Done(result)

    app.centralized(pooled_dataframe, params) → the same result from a trusted library

A payload field holds numbers, strings, booleans, lists/dicts of them, nested payloads or numpy
arrays; unknown fields or wrong types in a reply are a protocol failure blamed on the site.
Results are JSON-ready dicts; regression apps put ``coefficients`` and ``std_errors`` as maps
from ``"intercept"`` and each feature name to a number. ``docs/writing-an-app.md`` is the guide.

A site's local state (if an app needs any between rounds) lives in ``SiteContext.state``; the
coordinator's in ``CoordinatorContext.state``. State that must outlive the site's agent (a restart,
``fedflow resume``) goes through ``SiteContext.store``, whose files the node agent keeps. Files an app wants written at the site itself (for
example per-site projections) go into ``SiteContext.outputs``: the node agent writes them to the
site's own output folder, and they never travel to the coordinator.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
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
    "Empty",
    "Exact",
    "Params",
    "Payload",
    "Phase",
    "SiteContext",
    "SiteInfo",
    "StateStore",
    "SUM",
    "Step",
    "Table",
    "check_columns",
    "check_min_count",
    "check_unique",
    "decode_payload",
    "encode_payload",
    "merged_columns",
    "named",
    "numeric_columns",
    "require_columns",
    "sum_replies",
]

ColumnKind = Literal["numeric", "binary", "any"]
"""What a site must hold in a column: numbers, 0/1 numbers, or anything (categories)."""


class Params(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every app's parameters: immutable, typed, unknown keys refused."""


P = TypeVar("P", bound=Params)
_Params = Params  # the base class, for annotations inside App (where ``Params`` is the app's own)


BATCH_ROWS = 1 << 16
"""Rows per batch when an app streams a site's data (64 Ki rows: 512 KiB per float column)."""


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

    def batches(
        self, names: Sequence[str] | None = None, rows: int = BATCH_ROWS
    ) -> Iterator[Table]:
        """Yield the table (or only ``names``) in consecutive slices of ``rows`` rows (the last
        one shorter).

        Apps whose site step is a reduction iterate over batches, so their memory does not grow
        with the site's rows; slices of an in-memory table are views, not copies. At a site, an
        app with ``streaming = True`` gets a table whose ``batches`` re-read the site's files or
        query at every call (``fedflow.node.data.StreamedTable``) and which refuses whole-column
        access (``table[name]``, ``matrix``, ``select``).
        """
        if rows < 1:
            raise ValueError("rows must be at least 1")
        chosen = list(self._columns) if names is None else list(names)
        for start in range(0, self._n, rows):
            yield Table({n: self._columns[n][start : start + rows] for n in chosen})

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
    secure: bool = False
    """Whether the study asked for ``secure = true``: only summed phases may run, and their
    ``aggregate_<phase>`` receives ``{SUM: the sum over sites}`` instead of one reply per site."""
    state: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Warnings for the user (e.g. "did not converge"); written to the result and shown."""
    summed_over: list[str] | None = None
    """Under ``secure = true``: the sites whose replies are in the sum the last
    ``aggregate_<phase>`` received (who took part is not secret; what each sent is)."""


@dataclass
class SiteContext:
    """Per-run context handed to ``local`` at a site."""

    site: str
    seed: int | None = None
    min_count: int = 5
    round: int = 0
    secure: bool = False
    """Whether this run aggregates securely (the site's reply is masked before it leaves)."""
    state: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, bytes] = field(default_factory=dict)
    """Files to write into the site's own output folder: name -> content. They stay at the site."""
    store: StateStore = field(default_factory=lambda: StateStore())
    """The app's own state files at this site, kept between rounds and across restarts of the
    site's agent and ``fedflow resume`` (the node agent's is a folder under the site's run
    folder; this default keeps them in memory). They never leave the site."""


class StateStore:
    """A site's state files for the app (name → bytes): the node agent writes each atomically
    into the site's state folder; this base keeps them in memory (in-process runs). Names are
    plain file names."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}

    def where(self, name: str) -> str:
        """Where ``name`` is kept (for messages)."""
        return f"<memory>/{name}"

    def read(self, name: str) -> bytes:
        """Return the content of ``name``; DataError naming it when it is missing."""
        if name not in self._files:
            raise DataError(f"state file {self.where(name)} is missing", file=self.where(name))
        return self._files[name]

    def write(self, name: str, content: bytes) -> None:
        """Keep ``content`` as ``name`` (whole or not at all)."""
        self._files[name] = bytes(content)

    def prune(self, prefix: str, keep: Iterable[str]) -> None:
        """Remove the files whose names start with ``prefix``, except ``keep``."""
        kept = set(keep)
        for name in [n for n in self._files if n.startswith(prefix) and n not in kept]:
            del self._files[name]


class Payload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every phase payload: what a phase sends to the sites, and what each site returns.

    Fields are typed: numbers, strings, booleans, lists and dicts of them, nested payloads, and
    numpy arrays (annotate as ``np.ndarray``). Unknown fields and wrong types are refused when a
    payload is decoded, so a malformed reply is blamed on the site that sent it.
    """


class Empty(Payload, frozen=True):
    """A payload with nothing in it (a phase that needs no input)."""


PayloadT = TypeVar("PayloadT", bound=Payload)


@dataclass(frozen=True)
class Phase:
    """One named step of an app's conversation: the payload type sent to the sites and the one
    each site returns. The app implements ``local_<name>`` (site) and ``aggregate_<name>``
    (coordinator) for it."""

    request: type[Payload]
    reply: type[Payload]
    summed: bool = False
    """Whether ``aggregate_<name>`` needs only the field-by-field sum of the replies over sites.

    Under ``secure = true`` only summed phases run, and the coordinator learns only that sum:
    ``aggregate_<name>`` then receives ``{SUM: sum_replies(replies)}``. Every field of a summed
    reply is an ``int`` (summed exactly), a ``float`` (summed exactly, then rounded once), a
    numpy array of float64 or int64 of the same shape at every site, or ``Exact`` (dyadic
    rationals, summed exactly and delivered as ``Fraction``s)."""


SUM = "Σ"
"""The one key of the replies a summed phase's aggregate receives under ``secure = true``."""

Exact = tuple[Fraction, ...]
"""A summed reply field of exact values (e.g. cross-products of float64 columns computed
without rounding). Each value must be a dyadic rational (an integer over a power of two); on the
wire in the clear each travels as its decimal text ``"n/d"``."""


@dataclass(frozen=True)
class Continue:
    """Another round: run ``phase`` at every site with ``request`` (or ``per_site[name]``)."""

    phase: str
    request: Payload
    per_site: dict[str, Payload] | None = None


@dataclass(frozen=True)
class Done:
    """The final result (JSON-ready) and optional files for the run directory (name -> bytes)."""

    result: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


Step = Continue | Done


_MAX_FRACTION_TEXT = 4096
"""Longest ``"n/d"`` text accepted for an ``Exact`` value (about 6,800 bits each side)."""


def _to_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send a value of type {type(value).__name__}")


def _from_wire(kind: type, value: Any) -> Any:
    if kind is np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        raise msgspec.ValidationError(f"Expected `array`, got `{type(value).__name__}`")
    if kind is Fraction:
        if isinstance(value, int) and not isinstance(value, bool):
            return Fraction(value)
        if isinstance(value, str) and len(value) <= _MAX_FRACTION_TEXT:
            try:
                exact = Fraction(value)
            except (ValueError, ZeroDivisionError):
                pass
            else:
                if exact.denominator & (exact.denominator - 1) == 0:
                    return exact
        raise msgspec.ValidationError('Expected an exact dyadic rational `"n/d"`')
    raise TypeError(f"no decoder for {kind!r}")  # msgspec reports it as a validation error


def encode_payload(payload: Payload) -> dict[str, Any]:
    """Return ``payload`` as a map of builtins and numpy arrays, ready for the wire codec."""
    return msgspec.to_builtins(payload, enc_hook=_to_wire, builtin_types=(np.ndarray,))  # type: ignore[no-any-return]


def decode_payload(raw: Mapping[str, Any], kind: type[PayloadT]) -> PayloadT:
    """Return ``raw`` (a decoded wire map) as a ``kind`` payload.

    Raises msgspec.ValidationError naming the field that is missing, unknown or of a wrong type.
    """
    if not isinstance(raw, Mapping):
        raise msgspec.ValidationError(f"Expected `object`, got `{type(raw).__name__}`")
    return msgspec.convert(raw, kind, dec_hook=_from_wire)


def sum_replies(replies: Mapping[str, PayloadT], kind: type[PayloadT]) -> PayloadT:
    """Return the field-by-field sum of a summed phase's replies, exactly as secure aggregation
    delivers it: ints and ``Exact`` values summed exactly, floats and float arrays summed exactly
    and rounded once to float64. Raises AppError when array shapes differ between sites."""
    if not replies:
        raise AppError("no replies to sum")
    fields: dict[str, Any] = {}
    items = list(replies.values())
    for name in kind.__struct_fields__:
        values = [getattr(reply, name) for reply in items]
        first = values[0]
        if isinstance(first, np.ndarray):
            shapes = {np.shape(v) for v in values}
            if len(shapes) > 1:
                raise AppError(f"field '{name}': arrays of different shapes {sorted(shapes)}")
            if first.dtype.kind in "iub":
                total = np.zeros(first.shape, dtype=object)
                for v in values:
                    total = total + np.asarray(v, dtype=np.int64).astype(object)
                fields[name] = total.astype(np.int64)
            else:
                flat = [np.asarray(v, dtype=np.float64).ravel() for v in values]
                exact = [
                    sum((Fraction(float(x)) for x in column), Fraction(0))
                    for column in zip(*flat, strict=True)
                ]
                fields[name] = np.array([float(x) for x in exact], dtype=np.float64).reshape(
                    first.shape
                )
        elif isinstance(first, tuple):
            lengths = {len(v) for v in values}
            if len(lengths) > 1:
                raise AppError(
                    f"field '{name}': exact vectors of different lengths {sorted(lengths)}"
                )
            fields[name] = tuple(sum(column, Fraction(0)) for column in zip(*values, strict=True))
        elif isinstance(first, float):
            fields[name] = float(sum((Fraction(v) for v in values), Fraction(0)))
        else:
            fields[name] = sum(values)
    return kind(**fields)


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


def numeric_columns(columns: Mapping[str, str], *, exclude: Iterable[str] = ()) -> list[str]:
    """Return every numeric (``int``/``float``) column of ``columns`` not in ``exclude``, in
    order: the default feature list of apps that take "every numeric column except …"."""
    skip = set(exclude)
    return [c for c, kind in columns.items() if kind in ("int", "float") and c not in skip]


def check_unique(names: Sequence[str], what: str) -> None:
    """Raise ValueError naming every entry of ``names`` listed more than once (``what``: the key)."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} listed twice: {', '.join(dupes)}")


def named(names: Sequence[str], values: Iterable[Any]) -> dict[str, float]:
    """Return ``{name: float(value)}`` in order (coefficient tables and per-column results)."""
    values = list(values)
    if len(values) != len(names):
        raise ValueError(f"{len(names)} names for {len(values)} values")
    return {name: float(v) for name, v in zip(names, values, strict=True)}


class App(ABC, Generic[P]):
    """Base class of federated apps: parameters, phases, a centralized twin.

    A subclass sets ``name``, ``Params``, ``reference`` and ``phases`` (phase name → ``Phase``),
    and implements ``columns``, ``centralized`` and, for every phase, ``local_<phase>`` and
    ``aggregate_<phase>``. ``start`` names the first phase (default: the first declared phase
    with an empty request). A class that misses one of these fails when it is defined.

    ``tolerance`` and ``absolute_tolerance`` describe how closely the app's result matches its
    twin (the fidelity cases hold the tolerance each comparison actually uses).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    reference: ClassVar[str] = ""
    """The library (and routine) of the centralized twin, e.g. ``"statsmodels OLS"``."""
    phases: ClassVar[Mapping[str, Phase]] = {}
    tolerance: ClassVar[float] = 1e-8
    absolute_tolerance: ClassVar[float] = 1e-12
    """Absolute difference always accepted (results that should be 0 come out as 1e-17)."""
    secure: ClassVar[bool | str] = False
    """``True`` when every phase the app runs with ``ctx.secure`` is summed; otherwise a one-line
    reason why it cannot aggregate securely (``fedflow apps`` shows it, and a study asking for
    ``secure = true`` is refused with it)."""
    streaming: ClassVar[bool] = False
    """``True`` when every ``local_<phase>`` reads the site's rows only through
    ``data.batches()`` (and ``data.n_rows``), so a site never holds all rows at once. Apps that
    need every row at once (False) get the whole table, and a site's ``memory_limit`` refuses
    them clearly when the needed columns would not fit."""
    partial_rounds: ClassVar[bool] = False
    """``True`` when a round may be aggregated from the sites that answered (training's quorum
    and straggler cut-off); analytics need every site's reply."""
    coordinator_imports: ClassVar[tuple[str, ...]] = ("scipy.stats",)
    """Modules the app's ``aggregate_<phase>`` steps import lazily: the coordinator loads them in
    a thread while the sites start (scipy.stats takes a second or more; apps that need only
    scipy.special name that)."""
    tolerances: ClassVar[Mapping[str, tuple[float, float]]] = {}
    """Per result key (a path prefix such as ``"oob_accuracy"``): ``(rtol, atol)`` where the
    default does not apply; ``--compare`` writes the rule it applied to each value."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None) or not cls.phases:
            return  # an abstract intermediate class
        for phase in cls.phases:
            if not phase.isidentifier():
                raise TypeError(f"{cls.__name__}: phase name {phase!r} is not an identifier")
            for hook in (f"local_{phase}", f"aggregate_{phase}"):
                if not callable(getattr(cls, hook, None)):
                    raise TypeError(f"{cls.__name__}: phase '{phase}' needs a method {hook}()")

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
        """Fill defaults that depend on the data (``columns``: name -> kind, merged over sites).

        Default: return ``params`` unchanged. Raise AppError/DataError for impossible choices.
        """
        return params

    @abstractmethod
    def columns(self, params: P) -> dict[str, ColumnKind]:
        """Return the columns every site must hold, and what they must hold (every site checks
        them before computing; an app that needs no column returns ``{}``)."""

    # -- the conversation ---------------------------------------------------------------------
    def start(self, params: P, ctx: CoordinatorContext) -> Step:
        """Return the first step: by default the first declared phase with an empty request."""
        first = next(iter(self.phases))
        return Continue(first, self.phases[first].request())

    def local(
        self, data: Table, params: P, phase: str, request: Payload, ctx: SiteContext
    ) -> Payload:
        """Run ``phase`` at a site: dispatch to ``local_<phase>``; return its reply payload."""
        self.check_phase(phase)
        reply = getattr(self, f"local_{phase}")(data, params, request, ctx)
        expected = self.phases[phase].reply
        if not isinstance(reply, expected):
            raise AppError(
                f"app '{self.name}': local_{phase} returned {type(reply).__name__}, "
                f"not {expected.__name__}"
            )
        return reply  # type: ignore[no-any-return]

    def aggregate(
        self, phase: str, replies: Mapping[str, Payload], params: P, ctx: CoordinatorContext
    ) -> Step:
        """Combine the sites' replies to ``phase`` (site name → reply) into the next step."""
        self.check_phase(phase)
        step = getattr(self, f"aggregate_{phase}")(replies, params, ctx)
        if isinstance(step, Continue):
            self.check_phase(step.phase)
        return step  # type: ignore[no-any-return]

    @classmethod
    def check_phase(cls, name: str) -> Phase:
        """Return the declared phase called ``name``; raise AppError for an unknown one."""
        try:
            return cls.phases[name]
        except KeyError:
            raise AppError(
                f"app '{cls.name}' has no phase '{name}' (phases: {', '.join(cls.phases)})"
            ) from None

    # -- reference ------------------------------------------------------------------------------
    def reference_for(self, params: P) -> str:
        """Return the library and routine of the twin for these parameters (default
        ``reference``); e.g. ``"lifelines CoxPHFitter"`` for Efron ties."""
        return self.reference

    @abstractmethod
    def centralized(self, pooled: pd.DataFrame, params: P) -> dict[str, Any]:
        """Return the same result computed on pooled data by an independent, trusted library."""

    def centralized_seeded(
        self, pooled: pd.DataFrame, params: P, seed: int | None
    ) -> dict[str, Any]:
        """``centralized`` for a study run with ``seed``, for twins whose result depends on it
        (training: initial weights, held-out rows, batch order). Default: the seed is not used."""
        return self.centralized(pooled, params)

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Return the part of a result that ``--compare`` checks (default: all of it).

        Select by key (``result["coefficients"]``), never by presence: a key the result lacks
        must fail, not vanish from the comparison.
        """
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
