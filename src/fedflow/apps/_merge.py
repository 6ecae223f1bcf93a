"""Merge functions: pure, module-level, each tested against the pooled computation."""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "KEY_RANGE",
    "SMALL_ABOVE",
    "SMALL_BELOW",
    "QUANTILE_METHODS",
    "bisection_candidates",
    "combine_comoments",
    "combine_moments",
    "combine_moments4",
    "exact_moments",
    "exact_power_sums",
    "exact_product_sum",
    "exact_to_float",
    "cut_count_bounds",
    "float_keys",
    "float_to_key",
    "interpolate",
    "key_to_float",
    "merge_count_tables",
    "narrow",
    "quantile_positions",
    "suppress_cut_counts",
]


def combine_moments(parts: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Merge (count, mean, sum of squared deviations) triples exactly as if pooled (Chan et al.)."""
    n, mean, m2 = 0.0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        total = n + nb
        delta = mb - mean
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    return n, mean, m2


def combine_moments4(
    a: tuple[float, float, float, float, float], b: tuple[float, float, float, float, float]
) -> tuple[float, float, float, float, float]:
    """Merge two (count, mean, M2, M3, M4) tuples (Mₖ: sum of k-th powers of deviations from
    the mean) as if their records were pooled: Pébay's (2008) pairwise update, which extends
    Chan's. A part with no records returns the other unchanged, so one part merges exactly."""
    na, ma, m2a, m3a, m4a = a
    nb, mb, m2b, m3b, m4b = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mb - ma
    d_n = delta / n
    d_n2 = d_n * d_n
    cross = delta * d_n * na * nb  # δ² na nb / n
    mean = ma + d_n * nb
    m2 = m2a + m2b + cross
    m3 = m3a + m3b + cross * d_n * (na - nb) + 3.0 * d_n * (na * m2b - nb * m2a)
    m4 = (
        m4a
        + m4b
        + cross * d_n2 * (na * na - na * nb + nb * nb)
        + 6.0 * d_n2 * (na * na * m2b + nb * nb * m2a)
        + 4.0 * d_n * (na * m3b - nb * m3a)
    )
    return n, mean, m2, m3, m4


# --- exact sums of float64 values, their powers and products --------------------------------
_CHUNK = 1 << 12
"""Values handled at once (their digit arrays stay in cache; int64 sums of 2¹² digit-product
coefficients, each below 2³⁹, stay below 2⁵¹)."""


def _mantissas(x: np.ndarray, limb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (digits, sign, e) with x = sign · Σⱼ digitsⱼ·2^(limb·j) · 2^e exactly: ``digits``
    a (⌈54 / limb⌉, n) int64 array of the limb-bit digits of |mantissa| (< 2⁵³), ``sign`` in
    {-1, 0, 1}."""
    fraction, exponent = np.frexp(x)
    if not np.isfinite(fraction).all():
        raise ValueError("exact sums need finite values")
    m = np.ldexp(fraction, 53).astype(np.int64)
    shifts = np.arange(0, 54, limb, dtype=np.int64)
    digits = (np.abs(m)[None, :] >> shifts[:, None]) & ((1 << limb) - 1)
    return digits, np.sign(m), exponent.astype(np.int64) - 53


def _poly_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the product of two digit polynomials per value: (p × n, q × n) → (p + q − 1) × n."""
    out = np.zeros((a.shape[0] + b.shape[0] - 1, a.shape[1]), dtype=np.int64)
    for i in range(a.shape[0]):
        out[i : i + b.shape[0]] += a[i] * b
    return out


def _exact_total(digits: np.ndarray, sign: np.ndarray, exponents: np.ndarray, limb: int) -> int:
    """Return Σᵢ signᵢ · Σⱼ digitsᵢⱼ·2^(limb·j) · 2^(eᵢ − min e) as a Python int: int64 sums per
    exponent, combined as Python integers."""
    low = int(exponents.min())
    order = np.argsort(exponents, kind="stable")
    ordered = exponents[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sums = np.add.reduceat((digits * sign)[:, order], starts, axis=1).T
    total = 0
    for row, exponent in zip(sums.tolist(), ordered[starts].tolist(), strict=True):
        value = 0
        for j, digit in enumerate(row):
            value += digit << (limb * j)
        total += value << (exponent - low)
    return total


def _dyadic(total: int, low: int) -> Fraction:
    return Fraction(total, 1 << -low) if low < 0 else Fraction(total << low)


def _normalise(poly: np.ndarray, width: int, limb: int) -> np.ndarray:
    """Return a digit polynomial of non-negative coefficients as ``width`` digits of ``limb``
    bits each (carries propagated); the value must fit in ``width · limb`` bits."""
    out = np.zeros((width, poly.shape[1]), dtype=np.int64)
    carry = np.zeros(poly.shape[1], dtype=np.int64)
    mask = (1 << limb) - 1
    for j in range(width):
        value = carry + (poly[j] if j < poly.shape[0] else 0)
        out[j] = value & mask
        carry = value >> limb
    return out


def exact_power_sums(x: np.ndarray, k: int) -> list[Fraction]:
    """Return [Σx, Σx², …, Σxᵏ] (k ≤ 4) of float64 values exactly, with no rounding anywhere:
    each value split into 18-bit digits of its integer mantissa times a power of two; the square
    as a digit polynomial, carried back into six 18-bit digits, gives the cube and the fourth
    power as products of digit polynomials whose coefficients stay below 2³⁹ in int64; each
    power summed per exponent. Raises ValueError for non-finite values."""
    if not 1 <= k <= 4:
        raise ValueError("exact power sums go up to the fourth power")
    values = np.asarray(x, dtype=np.float64).ravel()
    limb = 18
    out = [Fraction(0)] * k
    for start in range(0, values.size, _CHUNK):
        digits, sign, e = _mantissas(values[start : start + _CHUNK], limb)
        powers = [digits]
        if k >= 2:
            powers.append(_poly_mul(digits, digits))
        if k >= 3:
            square = _normalise(powers[1], 6, limb)  # m² < 2¹⁰⁶
            powers.append(_poly_mul(square, digits))
        if k >= 4:
            powers.append(_poly_mul(square, square))
        for j, power in enumerate(powers, start=1):
            total = _exact_total(power, sign if j % 2 else np.abs(sign), e * j, limb)
            out[j - 1] += _dyadic(total, int(e.min()) * j)
    return out


def exact_product_sum(x: np.ndarray, y: np.ndarray) -> Fraction:
    """Return Σ xᵢ·yᵢ of two float64 vectors exactly (see ``exact_power_sums``)."""
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"vectors of {xs.size} and {ys.size} values")
    out = Fraction(0)
    for start in range(0, xs.size, _CHUNK):
        dx, sx, ex = _mantissas(xs[start : start + _CHUNK], 18)
        dy, sy, ey = _mantissas(ys[start : start + _CHUNK], 18)
        e = ex + ey
        out += _dyadic(_exact_total(_poly_mul(dx, dy), sx * sy, e, 18), int(e.min()))
    return out


def exact_to_float(value: Fraction) -> float:
    """Return ``value`` rounded once to the nearest float64 (±inf beyond the float range)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def exact_moments(n: int, sums: list[Fraction]) -> tuple[Fraction, ...]:
    """Return (mean, M2, M3, M4)[: len(sums)] exactly from n and the power sums [Σx, Σx², …]
    (Mₖ: the sum of k-th powers of deviations from the mean)."""
    if n < 1:
        raise ValueError("no records")
    s = list(sums) + [Fraction(0)] * (4 - len(sums))
    mean = s[0] / n
    m2 = s[1] - s[0] * mean
    m3 = s[2] - 3 * mean * s[1] + 2 * n * mean**3
    m4 = s[3] - 4 * mean * s[2] + 6 * mean**2 * s[1] - 3 * n * mean**4
    return (mean, m2, m3, m4)[: len(sums)]


# --- covariance ------------------------------------------------------------------------------
def combine_comoments(
    parts: list[tuple[float, np.ndarray, np.ndarray]],
) -> tuple[float, np.ndarray, np.ndarray]:
    """Merge (count, mean vector, centred cross-product matrix) triples exactly as if pooled.

    The matrix of a part is (X − mean)ᵀ(X − mean) over its rows; the merge is Chan's pairwise
    update, one outer product per part. Returns the pooled (count, mean, cross-product matrix);
    with no rows at all the mean and matrix are zeros of the parts' shape.
    """
    if not parts:
        raise ValueError("no parts to combine")
    p = len(parts[0][1])
    n, mean, c = 0.0, np.zeros(p), np.zeros((p, p))
    for nb, mb, cb in parts:
        mb = np.asarray(mb, dtype=np.float64)
        cb = np.asarray(cb, dtype=np.float64)
        if mb.shape != (p,) or cb.shape != (p, p):
            raise ValueError(f"part of shape {mb.shape}/{cb.shape}, expected ({p},)/({p}, {p})")
        if nb == 0:
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        c = c + cb + np.outer(delta, delta) * (n * nb / total)
        n = total
    return n, mean, c


# --- exact quantiles by federated bisection over the ordered float domain --------------------
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def float_keys(values: np.ndarray) -> np.ndarray:
    """Return uint64 keys that sort exactly like the float64 ``values`` (−0.0 counted as +0.0).

    Negative floats map below positive ones, and keys of consecutive floats are consecutive
    integers, so bisection over keys walks the float line one representable value at a time.
    """
    x = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    bits = x.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(_SIGN))


def float_to_key(value: float) -> int:
    """Return the key of one float (see ``float_keys``) as a Python int."""
    (bits,) = struct.unpack("<Q", struct.pack("<d", float(value) + 0.0))
    return (~bits) & _ALL if bits & _SIGN else bits | _SIGN


def key_to_float(key: int) -> float:
    """Return the float whose key is ``key`` (the inverse of ``float_to_key``)."""
    bits = key & ~_SIGN if key & _SIGN else (~key) & _ALL
    (value,) = struct.unpack("<d", struct.pack("<Q", bits))
    return float(value)


KEY_RANGE = (float_to_key(-math.inf), float_to_key(math.inf))
"""The keys of −inf and +inf: every non-NaN float64 lies between them."""


def bisection_candidates(lo: int, hi: int, per_round: int) -> list[int]:
    """Return up to ``per_round`` keys cutting [lo, hi] into near-equal parts (all in [lo, hi)).

    The N keys of [lo, hi] fall into ``per_round`` + 1 groups of at most ⌈N / (per_round + 1)⌉
    keys, each ending at a candidate (the last at ``hi``); the counts at the candidates tell
    which group holds the target. From N ≤ 2⁶⁴ keys, 255 candidates per round thus leave a
    single key after at most 8 rounds.
    """
    n = hi - lo + 1
    if n <= 1:
        return []
    parts = per_round + 1
    ends = {lo + (j * n + parts - 1) // parts - 1 for j in range(1, parts)}
    return sorted(k for k in ends if k < hi)


def narrow(
    lo: int,
    hi: int,
    rank: int,
    candidates: list[int],
    low: list[int],
    high: list[int] | None = None,
) -> tuple[int, int]:
    """Return the interval [lo, hi] narrowed by pooled counts of records ≤ each candidate.

    The target is the 0-based order statistic ``rank``: the smallest key whose count of records
    at or below it exceeds ``rank``. ``low`` / ``high`` bound each candidate's pooled count (equal
    when exact); a candidate whose lower bound exceeds ``rank`` bounds the target from above, one
    whose upper bound does not from below, and an undecided one leaves the interval alone.
    """
    high = low if high is None else high
    for key, least, most in zip(candidates, low, high, strict=True):
        if least > rank:
            hi = min(hi, key)
        elif most <= rank:
            lo = max(lo, key + 1)
    return lo, hi


SMALL_BELOW = -1
SMALL_ABOVE = -2


def suppress_cut_counts(counts: np.ndarray, n: int, min_count: int) -> np.ndarray:
    """Return a site's counts of records ≤ each candidate, withholding those near its extremes.

    A count is sent only when at least ``min_count`` of the site's ``n`` records lie on each side
    of the cut; otherwise it becomes ``SMALL_BELOW`` (fewer than ``min_count`` at or below, zero
    included) or ``SMALL_ABOVE`` (fewer above). Zero is withheld too: the place where a count
    turns from 0 to 1 is the site's minimum. So the ``min_count`` − 1 smallest and largest
    records of a site are never pinned down, whatever candidates a coordinator sends.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if min_count <= 1:
        return counts.copy()
    out = counts.copy()
    out[n - counts < min_count] = SMALL_ABOVE
    out[counts < min_count] = SMALL_BELOW
    return out


def cut_count_bounds(coded: np.ndarray, n: int, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (lowest, highest) possible counts behind a site's ``suppress_cut_counts`` answer."""
    coded = np.asarray(coded, dtype=np.int64)
    low, high = coded.copy(), coded.copy()
    below, above = coded == SMALL_BELOW, coded == SMALL_ABOVE
    low[below], high[below] = 0, min(min_count - 1, n)
    low[above], high[above] = max(n - min_count + 1, 0), n
    return low, high


QUANTILE_METHODS = (
    "inverted_cdf",
    "averaged_inverted_cdf",
    "closest_observation",
    "interpolated_inverted_cdf",
    "hazen",
    "weibull",
    "linear",
    "median_unbiased",
    "normal_unbiased",
    "lower",
    "higher",
    "midpoint",
    "nearest",
)
"""numpy's quantile methods (``numpy.quantile(method=...)``), all supported exactly."""


def quantile_positions(n: int, qs: list[float], method: str) -> list[tuple[int, float]]:
    """Return (0-based order statistic i, weight g) per q: numpy's quantile x₍ᵢ₎ + g·(x₍ᵢ₊₁₎ − x₍ᵢ₎).

    Every numpy method interpolates between two neighbouring order statistics; the positions are
    read off numpy's own answer on 0, 1, …, n−1 (one pass over n numbers), so they follow
    numpy's definition exactly.
    """
    if n < 1:
        raise ValueError("no records")
    index = np.arange(n, dtype=np.float64)
    how: Any = method
    found = np.quantile(index, qs, method=how, overwrite_input=True)
    out = []
    for position in np.atleast_1d(found).tolist():
        i = min(max(math.floor(position), 0), n - 1)
        g = position - i
        out.append((i, 0.0) if i == n - 1 or g <= 0.0 else (i, g))
    return out


def interpolate(low: float, high: float, g: float) -> float:
    """Return low + g·(high − low) the way numpy evaluates it (monotone, exact at both ends)."""
    if g == 0.0:
        return low
    diff = high - low
    return high - diff * (1.0 - g) if g >= 0.5 else low + diff * g


# --- contingency tables ------------------------------------------------------------------------
def merge_count_tables(
    parts: list[tuple[list[str], list[str], np.ndarray]],
) -> tuple[list[str], list[str], np.ndarray]:
    """Sum count tables whose levels differ between parts; levels come out sorted as strings.

    Each part is (row levels, column levels, counts[rows × columns]). Returns the union of the
    levels and the summed counts (int64), zero where no part saw a combination.
    """
    rows = sorted({str(r) for part in parts for r in part[0]})
    cols = sorted({str(c) for part in parts for c in part[1]})
    row_at = {r: i for i, r in enumerate(rows)}
    col_at = {c: j for j, c in enumerate(cols)}
    total = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for part_rows, part_cols, counts in parts:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (len(part_rows), len(part_cols)):
            raise ValueError(
                f"count table of shape {counts.shape} "
                f"for {len(part_rows)} × {len(part_cols)} levels"
            )
        ri = np.array([row_at[str(r)] for r in part_rows], dtype=np.intp)
        ci = np.array([col_at[str(c)] for c in part_cols], dtype=np.intp)
        np.add.at(total, (ri[:, None], ci[None, :]), counts)
    return rows, cols, total
