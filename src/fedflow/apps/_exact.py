"""Exact arithmetic for the regression apps' secure formulations: cross-products of float64
columns summed without any rounding, and least squares solved in exact rationals.

Every finite float64 is an odd integer times a power of two (or zero). ``ExactGram`` writes each
column of a batch as integers on a common binary scale, cuts them into 16-bit limbs, and lets one
float64 matrix product (BLAS) sum the limb products: a limb product is at most 2³² in magnitude,
so a sum over at most 2²⁰ rows stays within 2⁵² and every partial sum is an integer float64 holds
exactly, in any order. The limb sums are recombined in Python integers. A column spanning more than 256 bits
(values of wildly different magnitudes) goes through Python integers directly (slower, as exact).

``solve_normal_equations`` solves the p×p system of a Gram matrix of [X | y] in integers
(fraction-free Bareiss elimination on the matrix scaled to integers): the coefficients, the
inverse of XᵀX and the residual sum of squares come out as exact ``Fraction``s, rounded once
when turned into floats. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = [
    "ExactGram",
    "ExactLeastSquares",
    "RankDeficient",
    "full_matrix",
    "solve_normal_equations",
    "split_float64",
    "sqrt_fraction",
]

LIMB_BITS = 16
_LIMB_MASK = (1 << LIMB_BITS) - 1
_BLOCK_ROWS = 1 << 20
"""Rows per limb product: |limb| ≤ 2¹⁶, so a sum of 2²⁰ products stays within 2⁵² (exact)."""
_WIDE_LIMBS = 16
"""Columns needing more limbs than this (a span over 256 bits) are summed in Python integers."""

PIVOT_RATIO = Fraction(1, 10**24)
"""A pivot dⱼ of XᵀX (the square of Rⱼⱼ of X's QR factor) at most this times (XᵀX)ⱼⱼ marks
column j as (numerically) collinear with the columns before it: the same rule, |Rⱼⱼ| ≤ 1e-12 ×
‖R[:, j]‖, as the plaintext solver of linear-regression."""


def split_float64(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (mantissa, exponent), int64 arrays with ``values == mantissa · 2**exponent``
    exactly, each mantissa odd (or 0, with exponent 0).

    Raises ValueError for NaN or infinite values.
    """
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite value (NaN or infinity)")
    fraction, exponent = np.frexp(a)
    mantissa = np.ldexp(fraction, 53).astype(np.int64)  # |mantissa| < 2⁵³, an exact integer
    exponent = exponent.astype(np.int64) - 53
    magnitude = np.abs(mantissa).astype(np.uint64)
    lowest = magnitude & (~magnitude + np.uint64(1))  # the lowest set bit (0 for 0)
    zeros = np.frexp(lowest.astype(np.float64))[1].astype(np.int64) - 1  # trailing zero bits
    zeros = np.where(magnitude == 0, 0, zeros)
    mantissa = np.sign(mantissa) * (magnitude >> zeros.astype(np.uint64)).astype(np.int64)
    exponent = np.where(magnitude == 0, 0, exponent + zeros)
    return mantissa, exponent


class _Column:
    """One column of a batch on a common binary scale: each value is an integer times 2^low,
    with low the exponent of the last mantissa bit of the column's smallest value (0 for a
    column of whole numbers)."""

    __slots__ = ("low", "span", "values")

    def __init__(self, values: np.ndarray) -> None:
        if not np.all(np.isfinite(values)):
            raise ValueError("non-finite value (NaN or infinity)")
        self.values = values
        exponent = np.frexp(values)[1]  # |value| < 2^exponent, its last bit ≥ 2^(exponent − 53)
        nonzero = exponent[values != 0]
        if len(nonzero) == 0:
            self.low, self.span = 0, 0
            return
        self.low = int(nonzero.min()) - 53
        if self.low < 0 and np.array_equal(values, np.trunc(values)):
            self.low = 0  # whole numbers (a 1s column, 0/1 dummies, counts): no fraction bits
        self.span = int(nonzero.max()) - self.low

    @property
    def limbs(self) -> int:
        return max(1, -(-self.span // LIMB_BITS))

    def fill_limbs(self, out: np.ndarray) -> None:
        """Write the 16-bit limbs of each value's integer on the column's scale into ``out``
        (rows × limbs): value = Σⱼ limbⱼ · 2^(16j) · 2^low, every limb in [0, 2¹⁶) but the last,
        which carries the sign (in [−2¹⁶, 2¹⁶)).

        In float64 and exact: the integer value · 2^-low has at most 53 significant bits and
        magnitude below 2^(16·limbs) ≤ 2²⁵⁶, so every scaling by a power of two, floor and
        difference below is exact."""
        scale = -self.low
        if -1022 <= scale <= 1023:
            quotient = self.values * 2.0**scale
        else:
            quotient = np.ldexp(self.values, scale)
        higher = np.empty_like(quotient)
        last = self.limbs - 1
        for j in range(last):
            np.multiply(quotient, 2.0**-LIMB_BITS, out=higher)
            np.floor(higher, out=higher)  # ⌊value · 2^-(low + 16(j+1))⌋
            column = out[:, j]
            np.multiply(higher, -float(1 << LIMB_BITS), out=column)
            column += quotient
            quotient, higher = higher, quotient
        out[:, last] = quotient

    def integers(self) -> np.ndarray:
        """Return each value's integer on the column's scale as Python ints (an object array)."""
        odd, exponent = split_float64(self.values)
        shift = np.where(odd != 0, exponent - self.low, 0).astype(object)
        return np.asarray(odd.astype(object) * (np.ones_like(shift) << shift), dtype=object)


class ExactGram:
    """The exact Σ aᵢaᵢᵀ over the rows aᵢ of float64 batches with ``k`` columns (row by row).

    ``add(batch)`` folds in a batch (rows × k); ``upper()`` returns the upper triangle, row by
    row, as dyadic ``Fraction``s (the ``Exact`` reply field of a summed phase).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.rows = 0
        self._pairs = [(r, c) for r in range(k) for c in range(r, k)]  # row by row
        self._numerators = [0] * len(self._pairs)
        self._exponents = [0] * len(self._pairs)

    def _fold(self, index: int, numerator: int, exponent: int) -> None:
        """Add numerator · 2^exponent to pair ``index`` (kept as an integer and a binary scale)."""
        if numerator == 0:
            return
        current, scale = self._numerators[index], self._exponents[index]
        if current == 0:
            self._numerators[index], self._exponents[index] = numerator, exponent
        elif exponent >= scale:
            self._numerators[index] = current + (numerator << (exponent - scale))
        else:
            self._numerators[index] = (current << (scale - exponent)) + numerator
            self._exponents[index] = exponent

    def add(self, batch: np.ndarray) -> None:
        """Fold the rows of ``batch`` (rows × k, float64) in. Raises ValueError for a wrong
        number of columns or a non-finite value (naming the column's index)."""
        a = np.asfortranarray(batch, dtype=np.float64)  # columns contiguous
        if a.ndim != 2 or a.shape[1] != self.k:
            raise ValueError(f"a batch of shape {a.shape}, expected rows × {self.k}")
        for start in range(0, a.shape[0], _BLOCK_ROWS):  # no block at all for 0 rows
            self._add_block(a[start : start + _BLOCK_ROWS])
        self.rows += a.shape[0]

    def _add_block(self, a: np.ndarray) -> None:
        columns: list[_Column] = []
        for j in range(self.k):
            try:
                columns.append(_Column(a[:, j]))
            except ValueError as exc:
                raise ValueError(f"column {j}: {exc}") from None
        narrow = [j for j, c in enumerate(columns) if c.limbs <= _WIDE_LIMBS]
        starts: dict[int, int] = {}
        offset = 0
        for j in narrow:
            starts[j] = offset
            offset += columns[j].limbs
        sums: list[list[int]] = []
        if narrow:
            limbs = np.empty((a.shape[0], offset), dtype=np.float64, order="F")
            for j in narrow:
                columns[j].fill_limbs(limbs[:, starts[j] : starts[j] + columns[j].limbs])
            sums = (limbs.T @ limbs).astype(np.int64).tolist()  # exact integers below 2⁵²
        wide = {j: columns[j].integers() for j in range(self.k) if j not in starts}
        whole = dict(wide)
        if wide:  # a wide column meets every other one in Python integers
            whole.update({j: columns[j].integers() for j in starts})
        for index, (r, c) in enumerate(self._pairs):
            exponent = columns[r].low + columns[c].low
            if r in starts and c in starts:
                total = 0
                for a_ in range(columns[r].limbs):
                    row = sums[starts[r] + a_]
                    for b_ in range(columns[c].limbs):
                        total += row[starts[c] + b_] << ((a_ + b_) * LIMB_BITS)
            else:
                total = int(np.dot(whole[r], whole[c]))
            self._fold(index, total, exponent)

    def upper(self) -> tuple[Fraction, ...]:
        """Return the upper triangle of the Gram matrix, row by row, as exact Fractions."""
        out = []
        for numerator, exponent in zip(self._numerators, self._exponents, strict=True):
            if exponent >= 0:
                out.append(Fraction(numerator << exponent))
            else:
                out.append(Fraction(numerator, 1 << -exponent))
        return tuple(out)


def full_matrix(upper: Sequence[Fraction], k: int) -> list[list[Fraction]]:
    """Return the symmetric k × k matrix whose upper triangle (row by row) is ``upper``.

    Raises ValueError when ``upper`` does not hold k(k+1)/2 values.
    """
    if len(upper) != k * (k + 1) // 2:
        raise ValueError(f"{len(upper)} values for the upper triangle of a {k} × {k} matrix")
    matrix = [[Fraction(0)] * k for _ in range(k)]
    values = iter(upper)
    for r in range(k):
        for c in range(r, k):
            matrix[r][c] = matrix[c][r] = Fraction(next(values))
    return matrix


class RankDeficient(ValueError):
    """The normal equations are (numerically) singular; ``columns`` are the culprits' indices."""

    def __init__(self, columns: list[int]) -> None:
        super().__init__(f"collinear columns {columns}")
        self.columns = columns


class ExactLeastSquares:
    """The exact least-squares solution of a Gram matrix of [X | y]: ``coef`` (β), ``inverse``
    ((XᵀX)⁻¹, p × p) and ``rss`` (yᵀy − βᵀXᵀy), all ``Fraction``s."""

    __slots__ = ("coef", "inverse", "rss")

    def __init__(self, coef: list[Fraction], inverse: list[list[Fraction]], rss: Fraction):
        self.coef = coef
        self.inverse = inverse
        self.rss = rss


def _bareiss(matrix: list[list[int]], p: int) -> tuple[list[list[int]], list[int]]:
    """Fraction-free (Bareiss) elimination of the first ``p`` columns of ``matrix`` (p rows of
    integers, a symmetric positive semi-definite leading block), without row exchanges.

    Returns the eliminated rows and the columns whose pivot fails the collinearity rule. A
    failing column is skipped (never used as a pivot) and elimination carries on, so every
    culprit is named: skipping is Bareiss on the matrix with that column moved last.
    """
    m = [row[:] for row in matrix]
    previous = 1
    bad: list[int] = []
    bound = PIVOT_RATIO.denominator
    for k in range(p):
        pivot = m[k][
            k
        ]  # Δ(kept ∪ {k}); the LDLᵀ pivot dₖ is pivot / previous = Δ(kept ∪ {k}) / Δ(kept)
        if pivot <= 0 or pivot * bound <= matrix[k][k] * previous * PIVOT_RATIO.numerator:
            bad.append(k)
            continue
        row_k = m[k]
        tail = row_k[k + 1 :]
        for i in range(k + 1, p):
            row_i = m[i]
            factor = row_i[k]
            row_i[k + 1 :] = [
                (pivot * a - factor * b) // previous
                for a, b in zip(row_i[k + 1 :], tail, strict=True)
            ]
            row_i[k] = 0
        previous = pivot
    return m, bad


def solve_normal_equations(gram: Sequence[Sequence[Fraction]]) -> ExactLeastSquares:
    """Solve the least-squares problem whose Gram matrix of [X | y] is ``gram`` ((p+1) ×
    (p+1), exact), exactly.

    Raises RankDeficient listing every column j of X whose pivot dⱼ (Rⱼⱼ² of X's QR factor) is
    at most ``PIVOT_RATIO`` × (XᵀX)ⱼⱼ: collinear, constant or all-zero columns.
    """
    k = len(gram)
    p = k - 1
    g = [[Fraction(v) for v in row] for row in gram]
    if any(len(row) != k for row in g):
        raise ValueError(f"a Gram matrix must be square, got rows of {[len(r) for r in g]}")
    # scale to integers (the entries are dyadic, but any common multiple of denominators works)
    scale = math.lcm(1, *(v.denominator for row in g for v in row))
    ints = [[int(v * scale) for v in row] for row in g]
    augmented = [ints[i][: p + 1] + [1 if j == i else 0 for j in range(p)] for i in range(p)]
    m, bad = _bareiss(augmented, p)
    if bad:
        raise RankDeficient(bad)
    det = m[p - 1][p - 1] if p else 1  # det(scale · XᵀX)
    # fraction-free back-substitution: det · x is an integer vector (Cramer's rule), and each
    # division below is exact
    width = p + 1
    solution = [[0] * width for _ in range(p)]
    for i in range(p - 1, -1, -1):
        row = m[i]
        for c in range(width):
            total = det * row[p + c] - sum(row[j] * solution[j][c] for j in range(i + 1, p))
            solution[i][c] = total // row[i]
    coef = [Fraction(solution[i][0], det) for i in range(p)]
    # (scale · XᵀX)⁻¹ = (XᵀX)⁻¹ / scale
    inverse = [[Fraction(solution[i][1 + j] * scale, det) for j in range(p)] for i in range(p)]
    rss = g[p][p] - sum((coef[i] * g[i][p] for i in range(p)), Fraction(0))
    return ExactLeastSquares(coef, inverse, rss)


def sqrt_fraction(value: Fraction) -> float:
    """Return √value correctly rounded to float64. Raises ValueError when value < 0."""
    if value < 0:
        raise ValueError("square root of a negative number")
    if value == 0:
        return 0.0
    num, den = value.numerator, value.denominator
    # r = ⌊√value · 2^e⌋ with at least 66 bits: floats and their midpoints are then integers
    # apart at this scale, so none lies strictly between r and r + 1
    e = max(0, (134 - num.bit_length() + den.bit_length()) // 2)
    scaled = num << (2 * e)
    root = math.isqrt(scaled // den)
    if root * root * den != scaled:
        root, e = 2 * root + 1, e + 1  # strictly inside (r, r + 1): rounds as the true root
    return root / (1 << e)  # int / int: correctly rounded
