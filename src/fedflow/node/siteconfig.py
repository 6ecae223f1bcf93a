"""The site configuration: what a site offers and allows, written by its operator.

Looked up at ``$FEDFLOW_SITE_POLICY``, else ``$XDG_CONFIG_HOME/fedflow/site-policy.toml``
(default ``~/.config/fedflow/site-policy.toml``)::

    min_count = 10                       # floor; no study lowers it (default 5; 1 at owned sites)
    allowed_apps = ["stats", "cox"]      # built-in apps (absent: every built-in app)
    approved_code = ["sha256:…"]         # custom app sources approved here (fedflow site approve)
    outputs_leave_site = false           # per-site files (projections) may be fetched
    audit_log = "~/.local/state/fedflow/audit.jsonl"
    outputs = "~/.local/share/fedflow/outputs"
    memory_limit = "8GiB"                # refuse apps whose columns as float64 exceed this
                                         # (default: half the machine's memory)

    [datasets.cohort]
    path = "/srv/data/cohort.parquet"    # one file, a list of files, or globs ("/srv/*.csv")
    columns = ["age", "time", "event"]   # the only columns any app may touch (absent: all)
    sep = ";"                            # optional, as in a study's [[clients]]
    header = true

    [datasets.registry]                  # a SQL query: DuckDB (a database file, or ":memory:"
    duckdb = "/srv/registry.duckdb"      # with the query reading files) ...
    query = "SELECT age, time, event FROM patients ORDER BY id"

    [datasets.ehr]                       # ... or PostgreSQL (pip install 'fedflow-studies[db]'):
    postgres = "service=ehr"             # a libpq connection string, or
    # dsn_env = "EHR_DSN"                # the name of the site's environment variable holding it
    query = "SELECT age, time, event FROM cohort ORDER BY id"

Connections and credentials come from this file and the site's environment, never from a study.

Unknown keys and wrong types are errors naming the file and the key. Relative paths resolve
against the configuration file's folder.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from fedflow.errors import PolicyError

__all__ = [
    "DEFENDED_MIN_COUNT",
    "Dataset",
    "SiteConfig",
    "approved_store",
    "config_file",
    "format_bytes",
    "load_config",
    "source_hash",
]

DEFENDED_MIN_COUNT = 5
"""The floor of a bare (defended) agent whose configuration sets none."""

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class _DatasetFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str | list[str] | None = None
    duckdb: str | None = None
    postgres: str | None = None
    dsn_env: str | None = None
    query: str | None = None
    columns: list[str] | None = None
    sep: str | None = None
    header: bool = True
    names: list[str] | None = None


class _ConfigFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    min_count: int | None = None
    allowed_apps: list[str] | None = None
    approved_code: list[str] = []
    outputs_leave_site: bool = False
    audit_log: str | None = None
    outputs: str | None = None
    memory_limit: int | str | None = None
    datasets: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Dataset:
    """A dataset the site serves by name: its files, the columns apps may touch, how to read."""

    name: str
    paths: tuple[Path, ...]
    columns: tuple[str, ...] | None = None
    sep: str | None = None
    header: bool = True
    names: tuple[str, ...] | None = None
    """Column names of files without a header line."""
    duckdb: str | None = None
    """A DuckDB database file (or ``:memory:``) the ``query`` runs in."""
    postgres: str | None = None
    """A PostgreSQL connection string (libpq) the ``query`` runs on."""
    dsn_env: str | None = None
    """The site's environment variable holding the PostgreSQL connection string."""
    query: str | None = None
    """The SQL query whose result is the dataset (with ``duckdb``, ``postgres`` or ``dsn_env``)."""

    def reading(self) -> dict[str, Any]:
        """Return the keyword arguments of ``read_table`` for this dataset."""
        return {
            "sep": self.sep,
            "header": self.header,
            "columns": list(self.names) if self.names else None,
        }


@dataclass(frozen=True)
class SiteConfig:
    """A site's own rules. ``min_count`` None: the mode's default floor."""

    path: Path | None = None
    min_count: int | None = None
    allowed_apps: frozenset[str] | None = None
    approved_code: frozenset[str] = frozenset()
    outputs_leave_site: bool = False
    audit_log: Path | None = None
    outputs: Path | None = None
    datasets: Mapping[str, Dataset] = field(default_factory=dict)
    memory_limit: int | None = None
    """Bytes an app's columns may take as float64 at this site (None: half the memory)."""

    def memory_bytes(self) -> int:
        """The site's memory limit in bytes: its own, else half the machine's memory."""
        return self.memory_limit if self.memory_limit is not None else machine_memory() // 2

    def floor(self, *, owned: bool) -> int:
        """The site's minimum count: its own, else 1 at owned sites and 5 at defended ones."""
        if self.min_count is not None:
            return self.min_count
        return 1 if owned else DEFENDED_MIN_COUNT

    def audit_path(self, *, owned: bool) -> Path | None:
        """Where requests are logged: the configured file; a defended site always logs."""
        if self.audit_log is not None or owned:
            return self.audit_log
        return _state_home() / "fedflow" / "audit.jsonl"

    def outputs_dir(self) -> Path:
        """The site's own folder for per-site output files."""
        return self.outputs or _data_home() / "fedflow" / "outputs"


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | str) -> int:
    """Return a size (``8GiB``, ``500 MB``, ``1073741824``) in bytes. Raises ValueError."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError("must be positive")
        return value
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f'{value!r} is not a size such as "8GiB" or "500MB"')
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError("must be positive")
    return size


def format_bytes(size: int) -> str:
    """Return ``size`` in bytes as a short text (``1.5 GiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def machine_memory() -> int:
    """Return the machine's physical memory in bytes (8 GiB when it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def config_file() -> Path:
    """Return the site configuration file: ``$FEDFLOW_SITE_POLICY``, else
    ``$XDG_CONFIG_HOME/fedflow/site-policy.toml``."""
    explicit = os.environ.get("FEDFLOW_SITE_POLICY")
    if explicit:
        return Path(explicit).expanduser()
    return _config_home() / "fedflow" / "site-policy.toml"


def approved_store(config: Path) -> Path:
    """Return the folder of approved sources beside the configuration (``approved/``)."""
    return config.parent / "approved"


def source_hash(source: bytes) -> str:
    """Return ``sha256:<hex>`` of a source file's bytes, as approvals record it."""
    import hashlib

    return "sha256:" + hashlib.sha256(source).hexdigest()


def _explain(path: Path, message: str, prefix: str = "") -> str:
    unknown = re.match(r"Object contains unknown field `([^`]*)`(?: - at `\$(.*)`)?", message)
    if unknown:
        key, where = unknown.group(1), prefix + (unknown.group(2) or "")
        valid = list((_DatasetFile if prefix else _ConfigFile).__struct_fields__)
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
        return f"{path}: unknown key '{where.lstrip('.') + '.' if where else ''}{key}'{hint}"
    located = re.match(r"^(.*) - at `\$(.*)`$", message)
    if located:
        return f"{path}: key '{(prefix + located.group(2)).lstrip('.')}': {located.group(1)}"
    return f"{path}: {message}"


def load_config(path: Path | None = None) -> SiteConfig:
    """Return the site configuration at ``path`` (default ``config_file()``); an absent file is
    an empty configuration. Raises PolicyError naming the file and the key for anything else
    than the keys above, so a site never runs under rules it did not mean."""
    path = path or config_file()
    if not path.exists():
        return SiteConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        parsed = msgspec.convert(raw, _ConfigFile)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the site configuration ({exc})") from None
    except msgspec.ValidationError as exc:
        raise PolicyError(_explain(path, str(exc))) from None
    if parsed.min_count is not None and not 1 <= parsed.min_count < 2**63:
        raise PolicyError(f"{path}: key 'min_count' must be a positive integer")
    for code in parsed.approved_code:
        if not _HASH.match(code):
            raise PolicyError(f"{path}: approved_code entry {code!r} is not 'sha256:<64 hex>'")
    base = path.parent
    limit = None
    if parsed.memory_limit is not None:
        try:
            limit = parse_bytes(parsed.memory_limit)
        except ValueError as exc:
            raise PolicyError(f"{path}: key 'memory_limit': {exc}") from None

    def resolve(p: str) -> Path:
        return (base / Path(p).expanduser()).resolve()

    datasets = {}
    for name, table in parsed.datasets.items():
        try:
            ds = msgspec.convert(table, _DatasetFile)
        except msgspec.ValidationError as exc:
            raise PolicyError(_explain(path, str(exc), f".datasets.{name}")) from None
        engines = [k for k in ("duckdb", "postgres", "dsn_env") if getattr(ds, k) is not None]
        if len(engines) > 1:
            raise PolicyError(
                f"{path}: dataset '{name}' sets {', '.join(engines)}: give one source "
                "(path, duckdb or postgres/dsn_env)"
            )
        if engines:
            if ds.path is not None:
                raise PolicyError(
                    f"{path}: dataset '{name}': path and duckdb exclude each other "
                    '(to query files, use duckdb = ":memory:" and read them in the query)'
                )
            if not ds.query:
                raise PolicyError(f"{path}: dataset '{name}' sets {engines[0]} but no query")
            if ds.sep is not None or ds.names:
                raise PolicyError(f"{path}: dataset '{name}': sep and names apply to files only")
            database = ds.duckdb
            if database is not None and database != ":memory:":
                database = str(resolve(database))
            datasets[name] = Dataset(
                name,
                (),
                tuple(ds.columns) if ds.columns is not None else None,
                duckdb=database,
                postgres=ds.postgres,
                dsn_env=ds.dsn_env,
                query=ds.query,
            )
            continue
        if ds.query is not None:
            raise PolicyError(
                f"{path}: dataset '{name}' has a query but no database "
                '(set duckdb = "…" or postgres = "…")'
            )
        files = [ds.path] if isinstance(ds.path, str) else list(ds.path or [])
        if not files:
            raise PolicyError(f"{path}: dataset '{name}' names no file")
        datasets[name] = Dataset(
            name,
            tuple(resolve(f) for f in files),
            tuple(ds.columns) if ds.columns is not None else None,
            ds.sep,
            ds.header,
            tuple(ds.names) if ds.names else None,
        )
    return SiteConfig(
        path=path,
        min_count=parsed.min_count,
        allowed_apps=frozenset(parsed.allowed_apps) if parsed.allowed_apps is not None else None,
        approved_code=frozenset(parsed.approved_code),
        outputs_leave_site=parsed.outputs_leave_site,
        audit_log=resolve(parsed.audit_log) if parsed.audit_log else None,
        outputs=resolve(parsed.outputs) if parsed.outputs else None,
        datasets=datasets,
        memory_limit=limit,
    )
