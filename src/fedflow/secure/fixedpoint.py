"""Fixed-point encodings of float64 values in Z/2^k, for masking and exact summation.

``FixedPoint`` (exact, for analytics): every value is an integer multiple of 2^lsb with
|value| < 2^msb, so value·2^(−lsb) is an integer of at most msb − lsb bits. The ring has
k = 64·limbs ≥ msb − lsb + bitlen(terms) + 1 bits, so the sum of ``terms`` encoded values never
wraps: the decoded sum is the exact rational sum, and its float64 is the correctly rounded one.
Any float64 is a multiple of 2^−1074 below 2^1024, so ``FixedPoint.full(terms)`` holds every
float64 exactly and reveals nothing (33 limbs for up to 1000 sites: 264 bytes a value); ``FixedPoint.agree`` takes the
union of ranges the sites announce in the clear (two exponents per vector: the place of the
largest and of the finest bit, i.e. each site's magnitude within a factor of two and its
resolution) for a ring of typically 2 limbs. The product of two values of ranges (lsb₁, msb₁)
and (lsb₂, msb₂) is exact in range (lsb₁ + lsb₂, msb₁ + msb₂) (``FixedPoint.product``): a float64
times a float64 has at most 106 significant bits, and their sum over rows and sites is exact too.

``Clipped64`` (for training, large vectors): values clipped to [−clip, clip], rounded to multiples
of 2^−frac in the 64-bit ring. Error bound of a decoded sum of n values that were within the clip
range: n·2^−(frac+1) (each value rounds by at most half a unit); clipped values add their excess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from fedflow.secure import ring
from fedflow.secure.errors import EncodingError

__all__ = ["Clipped64", "FixedPoint", "exponent_range"]

FLOAT64_LSB = -1074
"""Every finite float64 is an integer multiple of 2^−1074 (the smallest subnormal)."""
FLOAT64_MSB = 1024
"""Every finite float64 is below 2^1024 in magnitude."""
_MIN_NORMAL = 2.0**-1022


_FRACTION = np.uint64((1 << 52) - 1)
_HIDDEN = np.uint64(1 << 52)
_EXPONENT = np.uint64(0x7FF)


def _parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (mantissa, exponent, negative, finite) of float64 values from their bits:
    |value| = mantissa·2^exponent exactly, mantissa a uint64 below 2^53 (0 for ±0)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    biased = (bits >> np.uint64(52)) & _EXPONENT
    fraction = bits & _FRACTION
    normal = biased != 0
    mantissa = np.where(normal, fraction | _HIDDEN, fraction)
    exponent = np.maximum(biased.astype(np.int64), 1) - 1075
    return mantissa, exponent, (bits >> np.uint64(63)).astype(bool), biased != _EXPONENT


def _places(mantissa: np.ndarray, exponent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return, for nonzero mantissas below 2^53, the place of the lowest set bit of
    mantissa·2^exponent and the bit length of its magnitude (its ``lsb`` and ``msb``)."""
    lowest = mantissa & (~mantissa + _ONE)  # a power of two below 2^53: exact as a float64
    low = (lowest.astype(np.float64).view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1023
    top = (mantissa.astype(np.float64).view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1022
    return exponent + low, exponent + top


_CHUNK = 1 << 14
"""Values per chunk of the vectorised paths: their temporaries stay in cache (and out of
the allocator's fresh pages) however long the vector."""


def exponent_range(values: np.ndarray | Iterable[float]) -> tuple[int, int]:
    """Return (lsb, msb): every value is a multiple of 2^lsb and below 2^msb in magnitude (the
    tightest such pair; (0, 0) for all zeros). Raises EncodingError for NaN or infinity."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size <= 64:  # a short vector: Python floats cost less than numpy's calls
        return _exponent_range_each(array.tolist())
    lsb: int | None = None
    msb: int | None = None
    for start in range(0, array.size, _CHUNK):
        mantissa, exponent, _, finite = _parts(array[start : start + _CHUNK])
        if not finite.all():
            raise EncodingError("cannot encode NaN or infinity for secure aggregation")
        nonzero = mantissa != 0
        if not nonzero.all():
            if not nonzero.any():
                continue
            mantissa, exponent = mantissa[nonzero], exponent[nonzero]
        low, top = _places(mantissa, exponent)
        lsb = int(low.min()) if lsb is None else min(lsb, int(low.min()))
        msb = int(top.max()) if msb is None else max(msb, int(top.max()))
    if lsb is None or msb is None:
        return 0, 0
    return lsb, msb


def _exponent_range_each(values: list[float]) -> tuple[int, int]:
    lsb: int | None = None
    msb: int | None = None
    for value in values:
        if not math.isfinite(value):
            raise EncodingError("cannot encode NaN or infinity for secure aggregation")
        if value == 0:
            continue
        num, den = value.as_integer_ratio()  # den is a power of two
        low = ((num & -num).bit_length() - 1) - (den.bit_length() - 1)
        top = math.frexp(value)[1]
        lsb = low if lsb is None else min(lsb, low)
        msb = top if msb is None else max(msb, top)
    if lsb is None or msb is None:
        return 0, 0
    return lsb, msb


@dataclass(frozen=True)
class FixedPoint:
    """Exact encoding of values that are multiples of 2^lsb below 2^msb; sums of up to ``terms``
    of them decode exactly."""

    lsb: int
    msb: int
    terms: int

    def __post_init__(self) -> None:
        if self.msb < self.lsb or self.terms < 1:
            raise ValueError("need lsb <= msb and terms >= 1")

    @classmethod
    def full(cls, terms: int) -> FixedPoint:
        """Every finite float64, exactly, whatever the data (reveals no range; 33 limbs)."""
        return cls(FLOAT64_LSB, FLOAT64_MSB, terms)

    @classmethod
    def agree(cls, ranges: Iterable[tuple[int, int]], terms: int) -> FixedPoint:
        """The smallest encoding that holds every announced (lsb, msb) range."""
        ranges = list(ranges)
        lsb = min(r[0] for r in ranges)
        return cls(lsb, max(lsb, *(r[1] for r in ranges)), terms)

    def product(self, other: FixedPoint) -> FixedPoint:
        """The encoding of products of a value of ``self`` and one of ``other``."""
        return FixedPoint(self.lsb + other.lsb, self.msb + other.msb, max(self.terms, other.terms))

    @property
    def bits(self) -> int:
        """Bits of the ring: room for the sum of ``terms`` values and the sign."""
        return self.msb - self.lsb + self.terms.bit_length() + 1

    @property
    def limbs(self) -> int:
        """64-bit words per value."""
        return -(-self.bits // 64)

    def _refuse(self, index: int, value: object, why: str) -> EncodingError:
        return EncodingError(
            f"value {value!r} at position {index} {why} of the agreed secure-aggregation range "
            f"(multiples of 2^{self.lsb} below 2^{self.msb})"
        )

    def encode(self, values: np.ndarray | Sequence[float | int | Fraction]) -> np.ndarray:
        """Return the values as a ring vector of ``limbs`` words each.

        Takes a float array (vectorised) or a sequence of ints and Fractions (exact products).
        Raises EncodingError naming the first value that is not finite, too large, or finer
        than 2^lsb.
        """
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            return self._encode_floats(values.astype(np.float64, copy=False).ravel())
        ints = []
        scale = Fraction(2) ** -self.lsb
        for i, value in enumerate(values):
            if isinstance(value, float) and not math.isfinite(value):
                raise self._refuse(i, value, "is not finite: outside")
            exact = Fraction(value) * scale
            if exact.denominator != 1:
                raise self._refuse(i, value, "has bits finer than the resolution")
            if abs(exact.numerator) >= 1 << (self.msb - self.lsb):
                raise self._refuse(i, value, "lies outside")
            ints.append(exact.numerator)
        return ring.from_ints(ints, self.limbs)

    def _encode_floats(self, values: np.ndarray) -> np.ndarray:
        """``encode`` of a float64 array: ``_encode_narrow`` for rings of one or two limbs,
        else (or to name a value that does not fit) ``_encode_bits``."""
        if self.limbs <= 2 and self.msb - self.lsb <= 126:
            out = np.empty((values.shape[0], self.limbs), dtype=np.uint64)
            for start in range(0, values.shape[0], _CHUNK):
                chunk = values[start : start + _CHUNK]
                if not self._encode_narrow(chunk, out[start : start + _CHUNK]):
                    return self._encode_bits(values)  # refuses, naming the value
            return out
        return self._encode_bits(values)

    def _encode_narrow(self, values: np.ndarray, out: np.ndarray) -> bool:
        """Write into ``out`` the encoding of ``values`` in a ring of one or two limbs, with
        float operations: x = v·2^(−lsb) is exact (two multiplications by powers of two, each
        factor within float64's range), and an integer below 2^126 when v fits; its two 64-bit
        halves are exact too (hi = ⌊|x|/2^64⌋, lo = |x| − hi·2^64 keeps a window of x's 53
        bits). Returns False when a value does not fit (NaN, infinite, too large, too fine)."""
        half = -self.lsb // 2
        with np.errstate(all="ignore"):
            scaled = values * _pow2(half)
            scaled *= _pow2(-self.lsb - half)
            magnitude = np.abs(scaled)
            if not (
                magnitude.max(initial=0.0) < 2.0 ** (self.msb - self.lsb)
                and np.array_equal(np.floor(magnitude), magnitude)
            ):
                return False  # not finite, too large, or bits finer than 2^lsb
        if self.limbs == 1:
            out[:, 0] = scaled.astype(np.int64).view(np.uint64)
            return True
        high = np.floor(magnitude * 2.0**-64)
        low = (magnitude - high * 2.0**64).astype(np.uint64)
        top = high.astype(np.uint64)
        negative = np.signbit(scaled) & (magnitude != 0)
        # −(hi·2^64 + lo) in Z/2^128: (2^64 − lo) mod 2^64, and ~hi + 1 when lo is 0 (else ~hi)
        out[:, 0] = np.where(negative, np.negative(low), low)
        out[:, 1] = np.where(negative, ~top + (low == 0).astype(np.uint64), top)
        return True

    def _encode_bits(self, values: np.ndarray) -> np.ndarray:
        """``encode`` of a float64 array, from the values' bits, chunk by chunk: the mantissa
        (below 2^53) of each value shifted to its place above 2^lsb in the ring's limbs,
        negated (two's complement) where the value is negative; whatever the ring's width."""
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.argmin(finite))
            raise self._refuse(i, float(values[i]), "is not finite: outside")
        out = np.empty((values.shape[0], self.limbs), dtype=np.uint64)
        big: int | None = None
        fine: int | None = None
        for start in range(0, values.shape[0], _CHUNK):
            chunk = values[start : start + _CHUNK]
            mantissa, exponent, negative, _ = _parts(chunk)
            nonzero = mantissa != 0
            low, top = _places(mantissa, exponent)
            outside = nonzero & (top > self.msb)
            if big is None and outside.any():
                big = start + int(np.argmax(outside))
            finer = nonzero & (low < self.lsb)
            if fine is None and finer.any():
                fine = start + int(np.argmax(finer))
            if big is not None or fine is not None:
                continue  # refused below: the first value of each kind is named
            shift = exponent - self.lsb
            # a value whose exponent lies below 2^lsb has as many zero bits at the bottom
            under = np.minimum(np.maximum(-shift, 0), 63).astype(np.uint64)
            part = ring.place(mantissa >> under, np.maximum(shift, 0), self.limbs)
            ring.negate_where(part, negative & nonzero)
            out[start : start + _CHUNK] = part
        if big is not None:
            raise self._refuse(big, float(values[big]), "lies outside")
        if fine is not None:
            raise self._refuse(fine, float(values[fine]), "has bits finer than the resolution")
        return out

    def decode(self, vector: np.ndarray) -> list[Fraction]:
        """Return the exact rational values of a ring vector (e.g. the unmasked sum)."""
        scale = Fraction(2) ** self.lsb
        return [Fraction(v) * scale for v in ring.to_ints(vector)]

    def decode_float(self, vector: np.ndarray) -> np.ndarray:
        """Return the values as float64, each the correctly rounded value of the exact sum
        (±inf beyond the float64 range)."""
        if vector.shape[0] > 16 and -2000 < self.lsb < 2000:
            return self._decode_float_wide(vector)
        return self._decode_float_each(vector)

    def _decode_float_each(self, vector: np.ndarray) -> np.ndarray:
        out = np.empty(vector.shape[0], dtype=np.float64)
        lsb = self.lsb
        for i, v in enumerate(ring.to_ints(vector)):
            # float(int) rounds correctly at any size; scaling by 2^lsb is then exact unless
            # the result leaves the normal range (subnormal or overflow): those take Fractions
            try:
                scaled = math.ldexp(float(v), lsb)
            except OverflowError:
                scaled = math.inf
            if v == 0 or (_MIN_NORMAL <= abs(scaled) < math.inf):
                out[i] = scaled
            else:
                try:
                    out[i] = float(Fraction(v) * Fraction(2) ** lsb)  # correctly rounded
                except OverflowError:
                    out[i] = math.inf if v > 0 else -math.inf
        return out

    def _decode_float_wide(self, vector: np.ndarray) -> np.ndarray:
        """``decode_float`` vectorised, chunk by chunk, for any number of limbs: of each
        value's magnitude (two's complement undone) the 64 bits from its highest set bit down,
        with a sticky 1 in the lowest bit when any bit below them is set, go to float64
        (numpy's uint64 → float64 conversion rounds to nearest, ties to even; the sticky bit
        lies 10 or 11 places below the 53rd bit, so the rounding is that of the exact
        magnitude), then are scaled by their place exactly (two multiplications by powers of
        two built from their bits). Results that are subnormal (a second rounding) or zero
        take the exact path."""
        out = np.empty(vector.shape[0], dtype=np.float64)
        for start in range(0, vector.shape[0], _CHUNK):
            out[start : start + _CHUNK] = self._decode_chunk(vector[start : start + _CHUNK])
        return out

    def _decode_chunk(self, vector: np.ndarray) -> np.ndarray:
        if vector.shape[1] <= 2:
            return self._decode_narrow(vector)
        words = np.array(vector, dtype=np.uint64, order="C", copy=True)
        n, limbs = words.shape
        negative = (words[:, -1] >> np.uint64(63)).astype(bool)
        ring.negate_where(words, negative)  # the magnitude (2^(k−1) stays: read as unsigned)
        if limbs == 1:
            high_limb: np.ndarray | int = 0
            high = words[:, 0]
            below = np.zeros(n, dtype=np.uint64)
            sticky = None
        else:
            # the highest nonzero limb h (the top one for a zero value), the limb below it,
            # and whether any limb under that one is nonzero
            nonzero = words != 0
            high_limb = (limbs - 1 - np.argmax(nonzero[:, ::-1], axis=1)).astype(np.int64)
            rows = np.arange(n)
            high = words[rows, high_limb]
            below = words[rows, np.maximum(high_limb - 1, 0)]
            below[high_limb == 0] = 0
            if limbs > 2:
                seen = np.logical_or.accumulate(nonzero, axis=1)
                sticky = (high_limb > 1) & seen[rows, np.maximum(high_limb - 2, 0)]
            else:
                sticky = None
        # b ≥ the bit length of ``high`` (its float's exponent; one more when the float
        # rounded up to a power of two), at most 64: ``top`` then holds 63 or 64 of its bits
        b = (high.astype(np.float64).view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1022
        b = np.clip(b, 1, 64).astype(np.uint64)
        top = (high << (np.uint64(64) - b)) | ((below >> (b - _ONE)) >> _ONE)
        lost = below & ~((_ALL << (b - _ONE)) << _ONE)  # the bits of ``below`` under ``top``
        if sticky is None:
            top |= (lost != 0).astype(np.uint64)
        else:
            top |= ((lost != 0) | sticky).astype(np.uint64)
        place = 64 * (high_limb - 1) + b.astype(np.int64) + self.lsb
        place = np.clip(place, -2000, 2000)  # beyond: 0 (the exact path) or ±inf either way
        half = place >> 1
        out = top.astype(np.float64)
        with np.errstate(over="ignore", under="ignore"):
            out *= ((half + 1023).astype(np.uint64) << np.uint64(52)).view(np.float64)
            out *= ((place - half + 1023).astype(np.uint64) << np.uint64(52)).view(np.float64)
        np.negative(out, out=out, where=negative)
        edge = (np.abs(out) < _MIN_NORMAL) & (top != 0)  # subnormal or underflown: exact
        if edge.any():
            out[edge] = self._decode_float_each(vector[edge])
        return out

    def _decode_narrow(self, vector: np.ndarray) -> np.ndarray:
        """``_decode_chunk`` of a ring of one or two limbs: a magnitude below 2^64 converts to
        float64 directly (rounded to nearest, ties to even); one of 64 + b bits keeps its top
        64 bits and a sticky 1 for the b bits below them, and is scaled by 2^b exactly."""
        if vector.shape[1] == 1:
            signed = vector[:, 0].view(np.int64)
            negative = signed < 0
            low = np.where(negative, np.negative(vector[:, 0]), vector[:, 0])
            high = np.zeros_like(low)
        else:
            low, high = vector[:, 0], vector[:, 1]
            negative = (high >> np.uint64(63)).astype(bool)
            # the magnitude: −(hi, lo) = (~hi + [lo = 0], −lo)
            high = np.where(negative, ~high + (low == 0).astype(np.uint64), high)
            low = np.where(negative, np.negative(low), low)
        wide = high != 0
        every = bool(wide.all())
        out = np.empty(low.shape[0]) if every else low.astype(np.float64)
        if every or wide.any():
            hi, lo = (high, low) if every else (high[wide], low[wide])
            # b ≥ the bit length of hi (one more when its float rounded up past a power of two)
            b = (hi.astype(np.float64).view(np.uint64) >> np.uint64(52)) - np.uint64(1022)
            b = np.minimum(b, np.uint64(64))
            top = (hi << (np.uint64(64) - b)) | ((lo >> (b - _ONE)) >> _ONE)
            top |= ((lo << (np.uint64(64) - b)) != 0).astype(np.uint64)  # the sticky bit
            scaled = top.astype(np.float64)
            scaled *= ((b + np.uint64(1023)) << np.uint64(52)).view(np.float64)
            if every:
                out = scaled
            else:
                out[wide] = scaled
        half = self.lsb // 2
        with np.errstate(over="ignore", under="ignore"):
            out *= _pow2(half)
            out *= _pow2(self.lsb - half)
        np.negative(out, out=out, where=negative)
        edge = (np.abs(out) < _MIN_NORMAL) & ((low != 0) | wide)  # subnormal: exact path
        if edge.any():
            out[edge] = self._decode_float_each(vector[edge])
        return out


def _pow2(k: int) -> float:
    """2.0^k for −1022 ≤ k ≤ 1023 (a normal float64), else 0 or inf."""
    return math.ldexp(1.0, k) if k < 1024 else math.inf


_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_ALL = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class Clipped64:
    """Values clipped to [−clip, clip] and rounded to multiples of 2^−frac, in Z/2^64, for sums
    of up to ``terms`` values. ``frac`` is the largest that cannot overflow: terms·clip·2^frac
    < 2^63."""

    clip: float
    terms: int

    @property
    def frac(self) -> int:
        """Fractional bits."""
        return 62 - math.ceil(math.log2(self.terms * self.clip))

    @property
    def error_bound(self) -> float:
        """Largest error of a decoded sum of ``terms`` values that lay within the clip range."""
        return self.terms * 2.0 ** -(self.frac + 1)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Return (ring vector of 1 limb, how many values were clipped). NaN is refused."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if np.isnan(array).any():
            raise EncodingError("cannot encode NaN for secure aggregation")
        clipped = int(np.count_nonzero(np.abs(array) > self.clip))
        scaled = np.rint(np.ldexp(np.clip(array, -self.clip, self.clip), self.frac))
        return scaled.astype(np.int64).view(np.uint64).reshape(-1, 1), clipped

    def decode(self, vector: np.ndarray) -> np.ndarray:
        """Return the float64 values of a ring vector (a sum of at most ``terms`` encodings)."""
        return np.ldexp(vector.reshape(-1).view(np.int64).astype(np.float64), -self.frac)
