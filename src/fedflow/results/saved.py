"""Read a run directory back: what ``fedflow report`` and ``fedflow compare`` work from.

``load_run_dir`` reads the files a run wrote (see ``rundir``) without running anything: the
manifest is required (a folder without one is not a run directory), everything else is optional,
because a failed run stops writing where it failed. Every problem is a one-line ``StudyError``
naming the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedflow.errors import StudyError

__all__ = ["SavedRun", "load_run_dir"]


@dataclass
class SavedRun:
    """The files of one run directory, parsed (absent ones are None / empty)."""

    path: Path
    manifest: dict[str, Any]
    result_doc: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None
    has_trace: bool = False

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``interrupted`` or ``running`` (as the manifest says)."""
        return str(self.manifest.get("status") or "unknown")

    @property
    def app(self) -> str | None:
        """The app that ran (None for a FeatureCloud run without one)."""
        app = self.manifest.get("app")
        return str(app) if app else None

    @property
    def result(self) -> dict[str, Any]:
        """The app's result (empty when the run wrote none)."""
        doc = self.result_doc or {}
        result = doc.get("result")
        return result if isinstance(result, dict) else {}

    @property
    def notes(self) -> list[str]:
        """The run's notes (from ``result.json``)."""
        return [str(n) for n in (self.result_doc or {}).get("notes") or []]

    @property
    def name(self) -> str:
        """The study's name (or the folder's name when the manifest has none)."""
        study = self.manifest.get("study") or {}
        return str(study.get("name") or self.path.name)

    @property
    def error(self) -> str | None:
        """The error a failed run recorded, as one line."""
        error = self.manifest.get("error")
        if not error:
            return None
        if isinstance(error, dict):
            kind, message = error.get("type"), error.get("message")
            return f"{kind}: {message}" if kind else str(message)
        return str(error)


def _read_json(path: Path, *, required: bool) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise StudyError(f"{path.parent}: not a run directory (no manifest.json)") from None
        return None
    except OSError as exc:
        raise StudyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StudyError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def load_run_dir(path: Path) -> SavedRun:
    """Return the parsed files of the run directory ``path``.

    Raises StudyError (one line, naming the path) when ``path`` is not a folder, holds no
    ``manifest.json``, or one of its JSON files is unreadable or malformed.
    """
    folder = Path(path).expanduser().absolute()
    if not folder.exists():
        raise StudyError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise StudyError(f"{folder}: not a run directory (a file, not a folder)")
    manifest = _read_json(folder / "manifest.json", required=True)
    return SavedRun(
        path=folder,
        manifest=manifest,
        result_doc=_read_json(folder / "result.json", required=False),
        metrics=_read_json(folder / "metrics.json", required=False) or {},
        comparison=_read_json(folder / "comparison.json", required=False),
        has_trace=(folder / "trace.jsonl").is_file(),
    )
