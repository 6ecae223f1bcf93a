"""Weights as safetensors (never pickle): named float arrays plus string metadata, as bytes.

Files are written with ``fedflow._atomic.atomic_write`` (a temporary file in the same folder,
fsynced, then renamed), so a run killed while writing leaves the previous file whole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

from fedflow.errors import DataError
from fedflow.training import require_torch

__all__ = ["from_safetensors", "safetensors_parts", "to_safetensors"]


_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def to_safetensors(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Return ``arrays`` (name → numpy array) and ``metadata`` as safetensors bytes, laid out
    deterministically (names and metadata sorted), so the same weights give the same bytes.

    (The safetensors library orders its metadata by a randomly seeded hash map; the format is
    simple enough to write here and is read back by that library.)"""
    return b"".join(safetensors_parts(arrays, metadata))


def safetensors_parts(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> list[bytes]:
    """The bytes of :func:`to_safetensors` as pieces (length and header, then each array's
    bytes, a copy), for a file write that gathers them instead of joining them first (for a
    200 kB checkpoint, the size of 10 sites × 60 rounds: 0.03-0.07 ms against 0.29-0.35 ms
    joined, medians of 300 in one process)."""
    header: dict[str, object] = {}
    chunks = []
    at = 0
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        kind = _DTYPES.get(value.dtype.name)
        if kind is None:
            raise ValueError(f"weights '{name}': dtype {value.dtype} cannot be saved")
        data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": kind,
            "shape": list(value.shape),
            "data_offsets": [at, at + len(data)],
        }
        chunks.append(data)
        at += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)) + text, *chunks]


def from_safetensors(data: bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Return the arrays and metadata of safetensors bytes; DataError naming ``where`` when they
    are not a safetensors file."""
    require_torch()
    from safetensors.numpy import load

    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        arrays = load(data)
    except Exception as exc:  # struct.error, ValueError, SafetensorError
        raise DataError(f"{where}: not a readable safetensors file ({exc})", file=where) from None
    metadata = header.get("__metadata__") or {}
    return dict(arrays), {str(k): str(v) for k, v in metadata.items()}
