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

Files are written as soon as they are known, so a run that fails still leaves its directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedflow.errors import StudyError

__all__ = ["RunDirectory", "json_ready", "utc_now"]


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


class RunDirectory:
    """A run's folder and its metrics, written as the run goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logs_dir = path / "logs"
        self.sites_dir = path / "sites"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.sites_dir.mkdir(parents=True, exist_ok=True)
        self.metrics: dict[str, Any] = {"phases": [], "rounds": [], "sites": {}}

    @classmethod
    def create(
        cls, outdir: Path, name: str, *, out: Path | None = None, force: bool = False
    ) -> RunDirectory:
        """Create the run folder: exactly ``out`` if given, else ``outdir/name/<UTC timestamp>``.

        Raises StudyError when ``out`` exists and is not empty, unless ``force``.
        """
        if out is not None:
            out = Path(out)
            if out.exists() and not out.is_dir():
                raise StudyError(f"--out {out}: exists and is not a folder")
            if out.exists() and any(out.iterdir()) and not force:
                raise StudyError(f"--out {out}: folder is not empty (use --force to write into it)")
            out.mkdir(parents=True, exist_ok=True)
            return cls(out)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
        base = outdir / name
        path = base / stamp
        n = 2
        while path.exists():
            path = base / f"{stamp}-{n}"
            n += 1
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise StudyError(f"cannot create the run directory {path}: {exc.strerror}") from None
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
        """Write ``data`` as indented JSON to ``name`` in the run folder (atomically)."""
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(
            json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        os.replace(tmp, target)
        return target

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write an artifact into the run folder (only a plain file name is accepted)."""
        target = self.path / Path(name).name
        target.write_bytes(data)
        return target

    def write_metrics(self) -> Path:
        """Write ``metrics.json`` from the metrics gathered so far."""
        return self.write_json("metrics.json", self.metrics)
