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


def _split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (mantissa, exponent) with values = mantissa·2^exponent exactly, |mantissa| < 2^53,
    mantissa odd (or zero: exponent 0)."""
    fraction, exponent = np.frexp(values)
    mantissa = np.ldexp(fraction, 53).astype(np.int64)  # exact: 53 significant bits at most
    exponent = exponent.astype(np.int64) - 53
    nonzero = mantissa != 0
    magnitude = np.abs(mantissa)
    # strip trailing zero bits so that the exponent is the place of the lowest set bit
    low = magnitude & -magnitude
    shift = np.zeros_like(exponent)
    shift[nonzero] = np.log2(low[nonzero].astype(np.float64)).astype(np.int64)
    mantissa = np.where(nonzero, mantissa >> shift, 0)
    exponent = np.where(nonzero, exponent + shift, 0)
    return mantissa, exponent


def exponent_range(values: np.ndarray | Iterable[float]) -> tuple[int, int]:
    """Return (lsb, msb): every value is a multiple of 2^lsb and below 2^msb in magnitude (the
    tightest such pair; (0, 0) for all zeros). Raises EncodingError for NaN or infinity."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size <= 64:  # a short vector: Python floats cost less than numpy's calls
        return _exponent_range_each(array.tolist())
    if not np.all(np.isfinite(array)):
        raise EncodingError("cannot encode NaN or infinity for secure aggregation")
    mantissa, exponent = _split(array)
    nonzero = mantissa != 0
    if not nonzero.any():
        return 0, 0
    lsb = int(exponent[nonzero].min())
    _, top = np.frexp(array[nonzero])
    return lsb, int(top.max())


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
        if self.limbs <= 2 and self.msb - self.lsb <= 126:
            fast = self._encode_narrow(values)
            if fast is not None:
                return fast
        limbs, n = self.limbs, values.shape[0]
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise self._refuse(i, float(values[i]), "is not finite: outside")
        _, top = np.frexp(values)
        big = (top > self.msb) & (values != 0)
        if big.any():
            i = int(np.argmax(big))
            raise self._refuse(i, float(values[i]), "lies outside")
        mantissa, exponent = _split(values)
        fine = (exponent < self.lsb) & (mantissa != 0)
        if fine.any():
            i = int(np.argmax(fine))
            raise self._refuse(i, float(values[i]), "has bits finer than the resolution")
        shift = np.where(mantissa != 0, exponent - self.lsb, 0)
        magnitude = np.abs(mantissa).astype(np.uint64)
        word, offset = shift // 64, (shift % 64).astype(np.uint64)
        out = ring.zeros(n, limbs)
        rows = np.arange(n)
        out[rows, word] = magnitude << offset
        spill = (offset > 0) & (word + 1 < limbs)
        high = magnitude[spill] >> (np.uint64(64) - offset[spill])
        out[rows[spill], word[spill] + 1] = high
        negative = mantissa < 0
        if negative.any():
            out[negative] = ring.neg(out[negative])
        return out

    def _encode_narrow(self, values: np.ndarray) -> np.ndarray | None:
        """``encode`` of floats into a ring of one or two limbs, with float operations only:
        x = v·2^(−lsb) is exact, and an integer below 2^126 when v fits; its two 64-bit halves
        are exact too (hi = ⌊|x|/2^64⌋, lo = |x| − hi·2^64 keeps a window of x's 53 bits).
        Returns None when a value does not fit (the exact path then names it)."""
        with np.errstate(all="ignore"):
            scaled = np.ldexp(values, -self.lsb)
            magnitude = np.abs(scaled)
            if not (
                np.all(magnitude < 2.0 ** (self.msb - self.lsb))
                and np.all(np.floor(magnitude) == magnitude)
            ):
                return None  # not finite, too large, or bits finer than 2^lsb
        if self.limbs == 1:
            return scaled.astype(np.int64).view(np.uint64).reshape(-1, 1)
        high = np.floor(np.ldexp(magnitude, -64))
        low = (magnitude - np.ldexp(high, 64)).astype(np.uint64)
        top = high.astype(np.uint64)
        negative = scaled < 0
        out = np.empty((values.shape[0], 2), dtype=np.uint64)
        # −(hi·2^64 + lo) in Z/2^128: (2^64 − lo) mod 2^64, and ~hi + 1 when lo is 0 (else ~hi)
        out[:, 0] = np.where(negative, np.negative(low), low)
        out[:, 1] = np.where(negative, ~top + (low == 0).astype(np.uint64), top)
        return out

    def decode(self, vector: np.ndarray) -> list[Fraction]:
        """Return the exact rational values of a ring vector (e.g. the unmasked sum)."""
        scale = Fraction(2) ** self.lsb
        return [Fraction(v) * scale for v in ring.to_ints(vector)]

    def decode_float(self, vector: np.ndarray) -> np.ndarray:
        """Return the values as float64, each the correctly rounded value of the exact sum
        (±inf beyond the float64 range)."""
        if vector.shape[1] <= 2 and vector.shape[0] > 64:
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
        """``decode_float`` of a ring of one or two limbs, vectorised: each signed value is
        rounded to 53 significant bits (to nearest, ties to even) with integer operations on
        its two 64-bit halves, then scaled by 2^lsb exactly; values whose result is subnormal,
        zero after scaling or infinite take the exact path."""
        words = np.ascontiguousarray(vector, dtype=np.uint64)
        lo = words[:, 0].copy()
        hi = words[:, 1].copy() if words.shape[1] == 2 else (lo >> np.uint64(63)) * _ALL
        negative = (hi >> np.uint64(63)).astype(bool)
        # magnitude of the two's complement (hi, lo): ~x + 1
        lo[negative], hi[negative] = ~lo[negative] + _ONE, ~hi[negative]
        hi[negative] += (lo[negative] == 0).astype(np.uint64)
        length = np.where(hi > 0, 64 + _bit_length(hi), _bit_length(lo))
        shift = np.maximum(length - 53, 0).astype(np.uint64)
        # q = magnitude >> shift, rest = the bits shifted out, half = 2^(shift-1)
        small = shift < 64
        q = np.where(small, (lo >> np.minimum(shift, 63)), hi >> (np.maximum(shift, 64) - 64))
        q = np.where(
            small & (shift > 0),
            q | (hi << (np.uint64(64) - np.clip(shift, 1, 63))),
            q,
        )
        # rest compared with half: look at the bit below the cut and whether any below it is set
        below = shift - _ONE  # the half bit's position (shift > 0)
        half_bit = np.where(
            below < 64,
            (lo >> np.minimum(below, 63)) & _ONE,
            (hi >> (np.maximum(below, 64) - 64)) & _ONE,
        )
        low_mask_lo = np.where(below >= 64, _ALL, (_ONE << np.minimum(below, 63)) - _ONE)
        low_mask_hi = np.where(below > 64, (_ONE << (np.clip(below, 65, 127) - 64)) - _ONE, 0)
        sticky = ((lo & low_mask_lo) | (hi & low_mask_hi.astype(np.uint64))) != 0
        up = (shift > 0) & (half_bit == 1) & (sticky | ((q & _ONE) == 1))
        q = q + up.astype(np.uint64)
        with np.errstate(over="ignore"):
            out = np.ldexp(q.astype(np.float64), shift.astype(np.int64) + self.lsb)
        out[negative] = -out[negative]
        edge = ~np.isfinite(out) | ((np.abs(out) < _MIN_NORMAL) & (length > 0))
        if edge.any():
            out[edge] = self._decode_float_each(vector[edge])
        return out


_ONE = np.uint64(1)
_ALL = np.uint64(2**64 - 1)


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bits of each uint64 (0 for 0), exactly: the float estimate corrected by one shift."""
    guess = np.frexp(x.astype(np.float64))[1].astype(np.int64)  # may be one too many
    guess = np.minimum(guess, 64)
    high = (x >> np.maximum(guess - 1, 0).astype(np.uint64)) == 0
    return np.where((x > 0) & high, guess - 1, np.where(x > 0, guess, 0))


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
