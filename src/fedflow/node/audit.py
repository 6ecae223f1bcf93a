"""The site's audit log: one JSON line per request answered or refused, hash-chained.

Each line is a JSON object whose ``prev`` is the sha256 of the previous line's bytes (64 zeros
for the first), so editing, removing or reordering any line breaks the chain at the next one.
Lines are appended under an exclusive lock, so agents of several concurrent runs share one log.

    {"time": "...", "prev": "<sha256>", "site": "...", "study": "...", "event": "task",
     "app": "...", "outcome": "released" | "refused", ...}
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "Verification", "verify"]

GENESIS = "0" * 64


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Append-only, hash-chained JSON lines at ``path`` (created with mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` (with ``time`` and ``prev`` added); return the line's object."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                entry = {"time": _now(), "prev": _last_hash(handle), **record}
                line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
                handle.seek(0, os.SEEK_END)
                handle.write(line.encode("utf-8") + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return entry


def _last_hash(handle: Any) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return GENESIS
    block = 4096
    tail = b""
    position = size
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        tail = handle.read(step) + tail
        body = tail.rstrip(b"\n")
        cut = body.rfind(b"\n")
        if cut >= 0 or position == 0:
            return hashlib.sha256(body[cut + 1 :]).hexdigest()
    return GENESIS


@dataclass(frozen=True)
class Verification:
    """The result of checking a log: lines read, and the first broken line (1-based) and why."""

    lines: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether every line chains to the one before it."""
        return self.broken_at is None


def verify(path: Path) -> Verification:
    """Check the chain of the log at ``path`` line by line."""
    expected = GENESIS
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            count = number
            line = raw.rstrip(b"\n")
            try:
                entry = json.loads(line)
            except ValueError:
                return Verification(number, number, "not a JSON line")
            if not isinstance(entry, dict) or entry.get("prev") != expected:
                return Verification(
                    number, number, "does not chain to the line before (edited or removed)"
                )
            expected = hashlib.sha256(line).hexdigest()
    return Verification(count)
