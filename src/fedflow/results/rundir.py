"""The run directory: everything one run produced, complete and self-describing.

    <run>/study.toml        a copy of the study file as it was run
    <run>/manifest.json     what ran: study hash, versions, app, params, seed, data fingerprints per
                            site, start/end, status ("running" → "completed" | "failed") and error
    <run>/result.json       {"app", "params", "result", "notes", "rounds"}
    <run>/metrics.json      duration of every phase, bytes per site per round, peak memory per site
    <run>/comparison.json   with --compare: every number federated vs centralized
    <run>/logs/<site>.log   each site's own log
    <run>/sites/<site>/     files an app wrote at a site (fetched from remote sites)
    <run>/<artifact>        files an app produced at the coordinator (e.g. forest.json)
    <run>/report.html       with fedflow report / run --report: the page, its plots in report/

Files are written as soon as they are known, so a run that fails still leaves its directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from fedflow._atomic import atomic_write, temporary_name
from fedflow.errors import StudyError

__all__ = [
    "RUN_FILES",
    "GrowingList",
    "RunDirectory",
    "clear_run_files",
    "encode_object",
    "json_ready",
    "utc_now",
    "write_toml",
]


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with a trailing Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_ready(value: Any) -> Any:
    """Return ``value`` with numpy scalars/arrays as builtins and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


RUN_FILES = (
    "manifest.json",
    "result.json",
    "metrics.json",
    "comparison.json",
    "study.toml",
    "study.original.toml",
    "report.html",
)
"""The files every run may write at the top of its folder (besides ``logs/``, ``sites/`` and the
artifacts its manifest lists)."""


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def clear_run_files(folder: Path) -> None:
    """Remove what an earlier run wrote into ``folder`` (its run files, ``logs/``, ``sites/`` and
    the artifacts its manifest lists) so that ``--force`` never mixes two runs; anything else in
    the folder is left alone. Raises StudyError when a file cannot be removed."""
    names = [*RUN_FILES, *(temporary_name(Path(n)).name for n in RUN_FILES)]
    names += [f"{n}.tmp" for n in RUN_FILES]  # what runs of earlier versions left
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        names += [Path(str(a)).name for a in manifest.get("artifacts") or []]
    except (OSError, ValueError, AttributeError):
        pass
    try:
        for name in names:
            target = folder / name
            if target.is_file() or target.is_symlink():
                target.unlink()
        for sub in ("logs", "sites", "report"):
            target = folder / sub
            if target.is_symlink():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
    except OSError as exc:
        raise StudyError(
            f"--out {folder}: cannot remove the earlier run's {exc.filename or 'files'}: {_why(exc)}"
        ) from None


class RunDirectory:
    """A run's folder and its metrics, written as the run goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logs_dir = path / "logs"
        self.sites_dir = path / "sites"
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self.sites_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(f"cannot write the run directory {path}: {_why(exc)}") from None
        self.metrics: dict[str, Any] = {"phases": [], "rounds": [], "sites": {}}
        self._growing = {key: GrowingList(_compact_metrics) for key in GROWING_METRICS}

    @classmethod
    def create(
        cls, outdir: Path, name: str, *, out: Path | None = None, force: bool = False
    ) -> RunDirectory:
        """Create the run folder (an absolute path): exactly ``out`` if given, else
        ``outdir/name/<UTC timestamp>``.

        Raises StudyError when ``out`` exists and is not empty, unless ``force`` (which first
        removes what an earlier run wrote there, see ``clear_run_files``), and when the folder
        cannot be created or written.
        """
        if out is not None:
            out = Path(out).expanduser().absolute()
            if out.exists() and not out.is_dir():
                raise StudyError(f"--out {out}: exists and is not a folder")
            if out.exists() and any(out.iterdir()):
                if not force:
                    raise StudyError(
                        f"--out {out}: folder is not empty (use --force to write into it)"
                    )
                clear_run_files(out)
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StudyError(f"--out {out}: cannot create the folder: {_why(exc)}") from None
            return cls(out)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
        base = Path(outdir).expanduser().absolute() / name
        path = base / stamp
        n = 2
        while path.exists():
            path = base / f"{stamp}-{n}"
            n += 1
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise StudyError(f"cannot create the run directory {path}: {_why(exc)}") from None
        return cls(path)

    def log_path(self, site: str) -> Path:
        """Return ``logs/<site>.log``."""
        return self.logs_dir / f"{site}.log"

    def site_dir(self, site: str) -> Path:
        """Return ``sites/<site>/`` (created)."""
        folder = self.sites_dir / site
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextlib.contextmanager
    def phase(self, name: str, **extra: Any) -> Iterator[dict[str, Any]]:
        """Time a phase; its entry (name, seconds, extra) lands in ``metrics["phases"]``."""
        entry: dict[str, Any] = {"name": name, **extra}
        started = time.perf_counter()
        try:
            yield entry
        finally:
            entry["seconds"] = time.perf_counter() - started
            self.metrics["phases"].append(entry)

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to ``name`` in the run folder (atomically): the bytes
        of ``json.dumps(json_ready(data), indent=2, allow_nan=False)`` and a newline, written
        the fast way (``_indented``)."""
        return _replace(self.path / name, _indented(json.dumps(json_ready(data), **_COMPACT)))

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write an artifact into the run folder (only a plain file name is accepted)."""
        target = self.path / Path(name).name
        target.write_bytes(data)
        return target

    def write_metrics(self) -> Path:
        """Write ``metrics.json`` from the metrics gathered so far (atomically).

        A training run rewrites it after every round, so it is written the fast way: compact
        JSON from json's C encoder, indented by msgspec, the very bytes ``write_json`` writes
        (at 10 sites × 21 rounds 2-3 ms instead of 15-20 ms); and the entries of its growing
        lists (``GROWING_METRICS``: a round's entry, a training round's history) are encoded
        once each (``GrowingList``), so a round's write costs the same at round 1,000 as at
        round 10 but for copying bytes. Values only ``json_ready`` can write (NaN, infinities)
        take ``write_json``'s path."""
        try:
            compact = encode_object(
                self.metrics,
                _compact_metrics,
                {k: e for k, e in self._growing.items() if isinstance(self.metrics.get(k), list)},
            )
        except (TypeError, ValueError):
            return self.write_json("metrics.json", self.metrics)
        return _replace(self.path / "metrics.json", _indented(compact))


def _replace(target: Path, data: bytes) -> Path:
    """Replace ``target`` by ``data`` atomically (not fsynced: these files are rewritten, not
    resumed from)."""
    atomic_write(target, data, sync=False)
    return target


_COMPACT: dict[str, Any] = {"separators": (",", ":"), "allow_nan": False}


def _indented(compact: str) -> bytes:
    """Compact JSON text (json.dumps's, ASCII) indented by two spaces, with a final newline: the
    bytes ``json.dumps(..., indent=2)`` gives, from msgspec's C formatter instead of json's
    Python encoder, which it falls back to whenever it indents (a 10-site training run of 200
    rounds: its "write results" phase 93 ms so, 32 ms this way)."""
    return msgspec.json.format(compact.encode("ascii"), indent=2) + b"\n"


GROWING_METRICS = ("rounds", "training")
"""The lists of ``metrics.json`` that grow by a round at a time (a round's entry; a training
run's history, whose last two entries are still filled in by the next round)."""


class GrowingList:
    """Compact JSON of a list that grows at its end and whose items, all but the last ``open``,
    no longer change: each item older than that is encoded once and its text kept.

    A list given that is not the one seen before (another object, or shorter than it was: its
    kept items could be open again) starts afresh;
    so does one whose kept prefix was replaced item by item (each kept item is compared by
    identity, not content: an item mutated in place after it was kept would be missed, which is
    why only items ``open`` or more from the end are kept)."""

    def __init__(self, encode: Callable[[Any], str], open: int = 2) -> None:
        self._encode = encode
        self._open = open
        self._items: list[Any] | None = None
        self._length = 0
        self._kept: list[tuple[Any, str]] = []

    def __call__(self, items: list[Any]) -> str:
        kept = self._kept
        if (
            items is not self._items
            or len(items) < self._length
            or any(items[i] is not item for i, (item, _) in enumerate(kept))
        ):
            self._items, kept = items, []
            self._kept = kept
        self._length = len(items)
        settled = max(len(kept), len(items) - self._open)
        for item in items[len(kept) : settled]:
            kept.append((item, self._encode(item)))
        parts = [text for _, text in kept]
        parts += (self._encode(item) for item in items[len(kept) :])
        return "[" + ",".join(parts) + "]"


def encode_object(
    data: dict[str, Any], encode: Callable[[Any], str], lists: dict[str, GrowingList]
) -> str:
    """Compact JSON of the dict ``data``, in its key order, each value by ``encode`` but the
    values under ``lists``'s keys, which their ``GrowingList`` encodes: the same text as
    ``encode(data)``."""
    if not lists:
        return encode(data)
    parts = []
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError("keys of a JSON object are text")
        grown = lists.get(key)
        parts.append(json.dumps(key) + ":" + (grown(value) if grown is not None else encode(value)))
    return "{" + ",".join(parts) + "}"


def _compact_metrics(value: Any) -> str:
    return json.dumps(value, **_COMPACT, default=_plain)


def _plain(value: Any) -> Any:
    """json.dumps's ``default`` for metrics: numpy arrays and scalars as builtins, paths as text
    (as ``json_ready`` writes them); anything else is refused (TypeError)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, Path)):
        # JSON's string escapes are valid in TOML basic strings (which also forbid a raw DEL)
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: Any) -> str:
    text = str(key)
    bare = text and all(c.isalnum() and c.isascii() or c in "-_" for c in text)
    return text if bare else json.dumps(text)


def write_toml(data: dict[str, Any], *, header: str = "") -> str:
    """Return ``data`` as TOML text: scalars first, then ``[tables]`` and ``[[arrays of tables]]``;
    None values are left out (TOML has no null). ``header`` lines become leading comments."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    tables: list[str] = []

    def is_table_list(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append(f"\n[{_toml_key(key)}]")
            tables += [
                f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
            ]
        elif is_table_list(value):
            for item in value:
                tables.append(f"\n[[{_toml_key(key)}]]")
                tables += [
                    f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items() if v is not None
                ]
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"
