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
    """``spec.encode`` of an int64 array, vectorised: each value v as v·2^(−lsb) in the ring
    (its magnitude as a uint64 word placed, then negated where v < 0; −2^63 included).
    Raises EncodingError naming the first value finer than 2^lsb or not below 2^msb."""
    if values.size == 0:
        return ring.zeros(0, spec.limbs)
    negative = values < 0
    words = values.view(np.uint64)
    magnitude = np.where(negative, np.negative(words), words)  # 2^63 for −2^63
    lsb = spec.lsb
    fine = np.zeros(values.shape, dtype=bool)
    if lsb > 0:  # every value a multiple of 2^lsb
        low = _ALL if lsb >= 64 else np.uint64((1 << lsb) - 1)
        fine = (magnitude & low) != 0
    big = (magnitude != 0) & (_bit_length(magnitude) > spec.msb)
    bad = fine | big
    if bad.any():
        i = int(np.argmax(bad))
        why = "has bits finer than the resolution" if fine[i] else "lies outside"
        raise spec._refuse(i, int(values[i]), why)
    if lsb > 0:
        magnitude = magnitude >> np.uint64(min(lsb, 63))
    out = ring.place(magnitude, max(-lsb, 0), spec.limbs)
    ring.negate_where(out, negative)
    return out


def _bit_length(words: np.ndarray) -> np.ndarray:
    """Bits of each uint64 (0 for 0), exactly: the float's exponent, one less when the
    conversion rounded up past a power of two."""
    guess = (words.astype(np.float64).view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1022
    guess = np.maximum(guess, 1)
    over = (words >> (guess - 1).astype(np.uint64)) == 0
    return np.where(words == 0, 0, guess - over)


_ALL = np.uint64(2**64 - 1)


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
        elif f.kind == "float":  # correctly rounded; ±inf beyond float64, as a float64 array
            try:
                out[f.name] = float(values[0])
            except OverflowError:
                out[f.name] = math.inf if values[0] > 0 else -math.inf
        else:
            ints = []
            for v in values:
                if v.denominator != 1:
                    raise EncodingError(f"field '{f.name}': the sum {v} is not an integer")
                ints.append(v.numerator)
            out[f.name] = ints[0]
    return out


def _decode_int64(name: str, spec: FixedPoint, part: np.ndarray) -> np.ndarray:
    """The int64 values of ring vector ``part`` scaled by 2^lsb, vectorised on its limbs.
    Raises EncodingError when a sum is not an integer or exceeds the int64 range."""
    words = np.ascontiguousarray(part, dtype=np.uint64)
    n, limbs = words.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sign = np.where((words[:, -1] >> np.uint64(63)).astype(bool), _ALL, np.uint64(0))

    def limb(i: int) -> np.ndarray:
        return words[:, i] if i < limbs else sign

    lsb = spec.lsb
    if lsb < 0:  # value = X / 2^r: the r lowest bits must be zero
        whole, offset = divmod(-lsb, 64)
        fraction = np.zeros(n, dtype=bool)
        for i in range(min(whole, limbs)):
            fraction |= words[:, i] != 0
        if offset and whole < limbs:
            fraction |= (words[:, whole] & np.uint64((1 << offset) - 1)) != 0
        if fraction.any():
            raise EncodingError(f"field '{name}': a sum is not an integer")
        value = limb(whole)
        if offset:
            value = (value >> np.uint64(offset)) | (limb(whole + 1) << np.uint64(64 - offset))
        first = -lsb + 63  # from this bit up, X must be all sign bits
    else:
        value = words[:, 0] << np.uint64(lsb) if lsb < 64 else np.zeros(n, dtype=np.uint64)
        first = 63 - lsb
    if first < 0:
        fits = ~words.any(axis=1)
    else:
        whole, offset = divmod(first, 64)
        fits = np.ones(n, dtype=bool)
        if whole < limbs:
            shift = np.uint64(offset)
            fits &= (words[:, whole] >> shift) == (sign >> shift)
            for i in range(whole + 1, limbs):
                fits &= words[:, i] == sign
    if not fits.all():
        raise EncodingError(f"field '{name}': the sum exceeds the int64 range")
    return value.view(np.int64)
