"""``trace.jsonl``: every message the coordinator receives, decoded to JSON, one line each.

Written only with ``fedflow run --trace``. Each line is one received message, in the order the
coordinator received it::

    {"seq": 3, "site": "berlin", "round": 1, "phase": "moments", "type": "reply",
     "message": {"round": 1, "payload": {"sum": {"dtype": "float64", "shape": [2],
                 "data": [1.5, 2.0]}}, "seconds": 0.001}}

``round`` and ``phase`` are the app's round and phase for replies to a task, and null for the
handshake (``welcome``, ``ready``), preparation (``prepared``) and finish (``bye``). Arrays are
written as ``{"dtype", "shape", "data"}`` with ``data`` the nested list of values (floats as the
shortest repr that round-trips, so no digit is lost). A site's failure report is traced too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

__all__ = ["TRACE_FILE", "TraceWriter", "to_json"]

TRACE_FILE = "trace.jsonl"


def _float(value: float) -> Any:
    # JSON has no NaN or infinity: write them as strings so the line stays valid JSON
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _plain(obj: Any) -> Any:
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"dtype": obj.dtype.name, "shape": list(obj.shape), "data": _plain(obj.tolist())}
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"bytes_hex": bytes(obj).hex()}
    raise TypeError(f"cannot trace a value of type {type(obj).__name__}")


def to_json(message: Any) -> Any:
    """Return ``message`` (a msgspec Struct, dict, list, array, scalar) as JSON-ready builtins:
    arrays as ``{"dtype", "shape", "data"}``, non-finite floats as strings."""
    return _plain(msgspec.to_builtins(message, enc_hook=_enc_hook))


class TraceWriter:
    """Append one JSON line per received message to ``path`` (created empty on construction).

    Each ``record`` opens, appends and closes, so a run that fails or is killed keeps every line
    written before it ended.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.write_bytes(b"")
        self._encoder = msgspec.json.Encoder()

    def record(self, site: str, message: Any, *, round: int | None, phase: str | None) -> None:
        """Append ``message`` received from ``site`` (its type's tag, round and phase)."""
        tag = getattr(type(message), "__struct_config__", None)
        kind = tag.tag if tag is not None and isinstance(tag.tag, str) else type(message).__name__
        line = {
            "seq": self.count,
            "site": site,
            "round": round,
            "phase": phase,
            "type": kind,
            "message": to_json(message),
        }
        with self.path.open("ab") as handle:
            handle.write(self._encoder.encode(line) + b"\n")
        self.count += 1
