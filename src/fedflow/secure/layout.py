"""A summed reply as one vector of exact values, and back.

A summed phase's reply (a msgspec struct) has fields of five kinds, flattened in field order:

- ``int``: a Python int; the sum is an int (exact);
- ``float``: a float; the sum is the correctly rounded float of the exact sum;
- ``exact``: a tuple of dyadic Fractions (``Exact``); the sum is a tuple of Fractions (exact);
- ``int64``: a numpy int (or bool) array; the sum is an int64 array (refused beyond int64);
- ``float64``: a numpy float array; the sum is a float64 array, each value correctly rounded.

The layout (each field's name, kind and shape) is public: every site announces it and all must
agree. The values are encoded with one ``FixedPoint`` spec that every site's values fit
(``Flat.range`` is a site's (lsb, msb); ``FixedPoint.agree`` unites them), so the decoded sum
is exact. This module knows no app: it reads any struct with ``__struct_fields__``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from fedflow.secure import ring
from fedflow.secure.errors import EncodingError
from fedflow.secure.fixedpoint import FixedPoint, exponent_range

__all__ = [
    "KINDS",
    "MAX_BITS",
    "Field",
    "Flat",
    "check_layout",
    "exact_range",
    "flatten",
    "unflatten",
]

KINDS = ("int", "float", "exact", "int64", "float64")

MAX_BITS = 4400
"""Widest exponent span (msb − lsb) of an agreed encoding: every product of two float64 values
(2·(1024 + 1074) bits) with room to spare. Announced ranges beyond it are refused."""

Segment = np.ndarray | list[int | Fraction]
"""A field's values: a float64 or int64 array (vectorised), or ints and Fractions."""


@dataclass(frozen=True)
class Field:
    """One field of a flattened reply: its name, kind (one of ``KINDS``) and shape (``()`` for
    ``int`` and ``float``, ``(n,)`` for ``exact``, the array's shape otherwise)."""

    name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """How many values the field holds."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Flat:
    """A reply flattened: its layout, its values per field, and the (lsb, msb) range they span
    (``None`` when every value is zero)."""

    layout: tuple[Field, ...]
    segments: tuple[Segment, ...]
    range: tuple[int, int] | None

    @property
    def length(self) -> int:
        """Values in all."""
        return sum(f.size for f in self.layout)

    def encode(self, spec: FixedPoint) -> np.ndarray:
        """Return every value as one ring vector of ``spec.limbs`` words each."""
        parts = [
            _encode_int64(spec, segment)
            if isinstance(segment, np.ndarray) and segment.dtype == np.int64
            else spec.encode(segment)
            for segment in self.segments
        ]
        if not parts:
            return np.zeros((0, spec.limbs), dtype=np.uint64)
        return np.ascontiguousarray(np.concatenate(parts, axis=0))


def exact_range(values: Sequence[int | Fraction]) -> tuple[int, int] | None:
    """Return (lsb, msb): every value is a multiple of 2^lsb and below 2^msb in magnitude
    (``None`` if all are zero). Raises EncodingError for a value that is not a dyadic rational."""
    lsb: int | None = None
    msb: int | None = None
    for i, value in enumerate(values):
        exact = Fraction(value)
        if exact == 0:
            continue
        den = exact.denominator
        if den & (den - 1):
            raise EncodingError(
                f"value {value} at position {i} is not a dyadic rational (an integer over a "
                "power of two) and cannot be summed exactly"
            )
        k = den.bit_length() - 1
        num = abs(exact.numerator)
        low = (num & -num).bit_length() - 1 - k
        high = num.bit_length() - k
        lsb = low if lsb is None else min(lsb, low)
        msb = high if msb is None else max(msb, high)
    if lsb is None or msb is None:
        return None
    return lsb, msb


def _int64_range(values: np.ndarray) -> tuple[int, int] | None:
    """``exact_range`` of an int64 array, vectorised."""
    nonzero = values[values != 0]
    if not nonzero.size:
        return None
    magnitude = np.abs(nonzero.astype(object) if nonzero.min() == -(2**63) else nonzero)
    low = int(np.min(magnitude & -magnitude))
    return low.bit_length() - 1, int(np.max(magnitude)).bit_length()


def _encode_int64(spec: FixedPoint, values: np.ndarray) -> np.ndarray:
    """``spec.encode`` of an int64 array, vectorised: each value v as v·2^(−lsb) in the ring."""
    if spec.lsb > 0 or values.size == 0 or int(np.min(values)) == -(2**63):
        return spec.encode([int(v) for v in values.tolist()])  # rare: the exact slow path
    top = int(np.max(np.abs(values)))
    if top and top.bit_length() > spec.msb:
        return spec.encode([int(v) for v in values.tolist()])  # refused there, naming the value
    shift = -spec.lsb
    word, offset = shift // 64, shift % 64
    magnitude = np.abs(values).astype(np.uint64)
    out = ring.zeros(values.shape[0], spec.limbs)
    out[:, word] = magnitude << np.uint64(offset)
    if offset and word + 1 < spec.limbs:
        out[:, word + 1] = magnitude >> np.uint64(64 - offset)
    negative = values < 0
    if negative.any():
        out[negative] = ring.neg(out[negative])
    return out


def _union(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1])


def flatten(reply: Any) -> Flat:
    """Return a summed reply (a struct) flattened. Raises EncodingError naming a field whose
    type cannot be summed, or a value that is not finite or not dyadic."""
    layout: list[Field] = []
    segments: list[Segment] = []
    span: tuple[int, int] | None = None
    for name in type(reply).__struct_fields__:
        value = getattr(reply, name)
        try:
            field, segment, found = _one(name, value)
        except EncodingError as exc:
            raise EncodingError(f"field '{name}': {exc}") from None
        layout.append(field)
        segments.append(segment)
        span = _union(span, found)
    return Flat(tuple(layout), tuple(segments), span)


def _one(name: str, value: Any) -> tuple[Field, Segment, tuple[int, int] | None]:
    if isinstance(value, np.ndarray):
        shape = tuple(int(s) for s in value.shape)
        if value.dtype.kind == "f":
            floats = np.ascontiguousarray(value, dtype=np.float64).ravel()
            found = exponent_range(floats) if floats.size and np.any(floats) else None
            return Field(name, "float64", shape), floats, found
        if value.dtype.kind in "iub":
            ints = np.ascontiguousarray(value, dtype=np.int64).ravel()
            return Field(name, "int64", shape), ints, _int64_range(ints)
        raise EncodingError(f"an array of dtype {value.dtype} cannot be summed")
    if isinstance(value, bool):
        raise EncodingError("a boolean cannot be summed (send 0 or 1 as an int)")
    if isinstance(value, int):
        one: list[int | Fraction] = [value]
        return Field(name, "int", ()), one, exact_range(one)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodingError(f"cannot encode {value} for secure aggregation")
        exact = Fraction(value)
        return Field(name, "float", ()), [exact], exact_range([exact])
    if isinstance(value, tuple):
        values: list[int | Fraction] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, Fraction)):
                raise EncodingError(f"an exact value of type {type(item).__name__}")
            values.append(item)
        return Field(name, "exact", (len(values),)), values, exact_range(values)
    raise EncodingError(f"a value of type {type(value).__name__} cannot be summed")


def check_layout(layout: Sequence[Field], length: int | None = None) -> None:
    """Raise ValueError if ``layout`` is malformed: an unknown kind, a shape that does not fit
    its kind, duplicate names, or (given ``length``) sizes that do not add up to it."""
    names = [f.name for f in layout]
    if len(set(names)) != len(names):
        raise ValueError("a field is named twice in the layout")
    for f in layout:
        if f.kind not in KINDS:
            raise ValueError(f"field '{f.name}' has unknown kind '{f.kind}'")
        if any(s < 0 for s in f.shape) or len(f.shape) > 32:
            raise ValueError(f"field '{f.name}' has shape {f.shape}")
        if f.kind in ("int", "float") and f.shape != ():
            raise ValueError(f"field '{f.name}' of kind {f.kind} has shape {f.shape}")
        if f.kind == "exact" and len(f.shape) != 1:
            raise ValueError(f"field '{f.name}' of kind exact has shape {f.shape}")
    if length is not None and sum(f.size for f in layout) != length:
        raise ValueError(f"the layout holds {sum(f.size for f in layout)} values, not {length}")


def unflatten(layout: Sequence[Field], spec: FixedPoint, vector: np.ndarray) -> dict[str, Any]:
    """Return the decoded sum of ring ``vector`` as field name → value (see the module's table).
    Raises EncodingError when an integer field's sum is not an integer or exceeds int64."""
    out: dict[str, Any] = {}
    start = 0
    for f in layout:
        part = vector[start : start + f.size]
        start += f.size
        if f.kind == "float64":
            out[f.name] = spec.decode_float(part).reshape(f.shape)
            continue
        if f.kind == "int64":
            out[f.name] = _decode_int64(f.name, spec, part).reshape(f.shape)
            continue
        values = spec.decode(part)
        if f.kind == "exact":
            out[f.name] = tuple(values)
        elif f.kind == "float":
            out[f.name] = float(values[0])
        else:
            ints = []
            for v in values:
                if v.denominator != 1:
                    raise EncodingError(f"field '{f.name}': the sum {v} is not an integer")
                ints.append(v.numerator)
            out[f.name] = ints[0]
    return out


def _decode_int64(name: str, spec: FixedPoint, part: np.ndarray) -> np.ndarray:
    ints = ring.to_ints(part)
    if spec.lsb >= 0:
        values = [v << spec.lsb for v in ints]
    else:
        shift, low = -spec.lsb, (1 << -spec.lsb) - 1
        if any(v & low for v in ints):
            raise EncodingError(f"field '{name}': a sum is not an integer")
        values = [v >> shift for v in ints]
    if values and not (min(values) >= -(2**63) and max(values) < 2**63):
        raise EncodingError(f"field '{name}': the sum exceeds the int64 range")
    return np.array(values, dtype=np.int64)
