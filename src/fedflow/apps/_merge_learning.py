"""Merge functions of the learning apps (``glm``, ``pca``, ``kmeans``): pure, module-level, numpy.

Also the pieces of their summed (secure) formulations: double-double sums of float64 rows
(``AccurateSum``, ``accurate_moment_sums``: about 2⁻¹⁰⁰ relative, sent as exact dyadic
rationals) and the Cholesky factor of an exact scatter matrix in 60 digits (``cholesky_exact``).

Each is tested against the pooled computation in ``tests/apps/test_glm.py``, ``test_pca.py`` and
``test_kmeans.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

__all__ = [
    "AccurateSum",
    "accurate_moment_sums",
    "cholesky_exact",
    "merge_centered_factors",
    "merge_cluster_sums",
    "r_factor",
    "stack_factors",
    "two_product",
    "two_sum",
]


def r_factor(a: np.ndarray) -> np.ndarray:
    """Return the upper-triangular factor R of A = QR (min(rows, columns) × columns)."""
    return np.asarray(np.linalg.qr(a, mode="r"))


def stack_factors(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Return the triangular factor R of the row-stacked matrices whose factors are ``factors``.

    Each site's factor Rₛ satisfies RₛᵀRₛ = AₛᵀAₛ; the result R satisfies RᵀR = Σ AₛᵀAₛ, the
    factor of the pooled matrix (tall-skinny QR), without forming AᵀA.
    """
    blocks = [np.atleast_2d(np.asarray(f, dtype=np.float64)) for f in factors]
    return r_factor(np.vstack(blocks))


def merge_centered_factors(
    parts: Sequence[tuple[float, np.ndarray, np.ndarray]],
) -> tuple[float, np.ndarray, np.ndarray]:
    """Return (n, mean, R) of the pooled data centred at the pooled mean.

    ``parts`` holds, per site, (nₛ, x̄ₛ, Rₛ) with RₛᵀRₛ = Σ (x − x̄ₛ)(x − x̄ₛ)ᵀ over the site's
    rows. The pooled scatter about the pooled mean x̄ is Σₛ [Sₛ + nₛ(x̄ₛ − x̄)(x̄ₛ − x̄)ᵀ] (Chan et
    al.), so stacking every Rₛ with the rows √nₛ(x̄ₛ − x̄) and factoring again gives R of the pooled
    centred matrix: exactly what an SVD of the pooled centred rows needs, without forming Σ.
    """
    used = [(float(n), np.asarray(m, dtype=np.float64), r) for n, m, r in parts if n > 0]
    if not used:
        raise ValueError("no records")
    n = sum(p[0] for p in used)
    # the weighted mean, summed from the smallest corrections (as in Chan's update)
    mean = used[0][1].copy()
    seen = used[0][0]
    for nb, mb, _ in used[1:]:
        seen += nb
        mean += (mb - mean) * (nb / seen)
    blocks: list[np.ndarray] = []
    for nb, mb, rb in used:
        blocks.append(np.atleast_2d(np.asarray(rb, dtype=np.float64)))
        blocks.append(np.sqrt(nb) * (mb - mean)[None, :])
    return float(n), mean, r_factor(np.vstack(blocks))


def merge_cluster_sums(
    counts: Sequence[np.ndarray], sums: Sequence[np.ndarray], previous: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Return (new centres, pooled counts, indices of empty clusters) of one Lloyd update.

    ``counts[s]`` (k,) and ``sums[s]`` (k, d) are the sites' per-cluster row counts and sums of
    rows. A cluster that no site reports keeps its ``previous`` centre.
    """
    total_n = np.sum([np.asarray(c, dtype=np.float64) for c in counts], axis=0)
    total_s = np.sum([np.asarray(s, dtype=np.float64) for s in sums], axis=0)
    centers = np.array(previous, dtype=np.float64, copy=True)
    filled = total_n > 0
    centers[filled] = total_s[filled] / total_n[filled, None]
    empty = [int(i) for i in np.flatnonzero(~filled)]
    return centers, total_n, empty


# -- accurate sums (double-double) for summed replies ---------------------------------------------
_SPLITTER = 134217729.0  # 2^27 + 1 (Veltkamp)
_BLOCK_CELLS = 1 << 18  # cells per block of products (2 MiB of float64 per temporary array)


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _veltkamp(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (p, e) with p = fl(a·b) and a·b = p + e exactly (Dekker's TwoProduct; exact for
    |a|, |b| below about 2^996 and products far from underflow)."""
    p = a * b
    ah, al = _veltkamp(a)
    bh, bl = _veltkamp(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _pairwise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (hi, lo): the sum over axis 0 of ``values`` as hi + lo, with the rounding error
    of every addition of a pairwise tree kept (TwoSum) and summed into lo."""
    v = values
    lo = np.zeros(values.shape[1:])
    while len(v) > 1:
        if len(v) % 2:
            v = np.concatenate([v, np.zeros((1, *v.shape[1:]))])
        v, err = two_sum(v[0::2], v[1::2])
        lo = lo + err.sum(axis=0)
    hi = v[0] if len(v) else np.zeros(values.shape[1:])
    return hi, lo


class AccurateSum:
    """A running sum of float64 arrays over rows, kept as a double-double ``hi + lo``.

    Every addition's rounding error is kept (TwoSum in a pairwise tree) and summed, so the total
    is accurate to about 2⁻¹⁰⁰ relative to Σ|value| (log₂ of the rows times 2⁻¹⁰⁶), whatever the
    order or the batch sizes; ``exact()`` returns it as dyadic rationals for an ``Exact`` reply
    field. Summing products of float64 values keeps them too: ``add(p, small=e)`` with
    (p, e) = ``two_product``.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.hi = np.zeros(shape)
        self.lo = np.zeros(shape)

    def add(self, values: np.ndarray, small: np.ndarray | None = None) -> None:
        """Add the rows of ``values`` (rows × shape), and of ``small`` (terms so small that
        their own rounding does not matter: errors of products, ~2⁻⁵³ of the values)."""
        hi, lo = _pairwise(np.asarray(values, dtype=np.float64))
        if small is not None:
            lo = lo + np.asarray(small, dtype=np.float64).sum(axis=0)
        s, err = two_sum(self.hi, hi)
        self.hi, self.lo = two_sum(s, self.lo + lo + err)

    def exact(self) -> tuple[Fraction, ...]:
        """Return the sum (flattened) as exact dyadic rationals ``hi + lo``; raises ValueError
        for values that are not finite."""
        if not (np.isfinite(self.hi).all() and np.isfinite(self.lo).all()):
            raise ValueError("the sum is not finite (values too large or not numbers)")
        return tuple(
            Fraction(h) + Fraction(lo)
            for h, lo in zip(self.hi.ravel().tolist(), self.lo.ravel().tolist(), strict=True)
        )


def accurate_moment_sums(
    batches: Iterable[np.ndarray], d: int
) -> tuple[tuple[Fraction, ...], tuple[Fraction, ...]]:
    """Return (Σx, Σx²) per column over the rows of ``batches`` (each rows × d), as dyadic
    rationals accurate to about 2⁻¹⁰⁰ relative (``AccurateSum``; x² exact by TwoProduct)."""
    sums, squares = AccurateSum((d,)), AccurateSum((d,))
    for x in batches:
        for start in range(0, len(x), max(1, _BLOCK_CELLS // max(1, d))):
            block = x[start : start + max(1, _BLOCK_CELLS // max(1, d))]
            sums.add(block)
            p, e = two_product(block, block)
            squares.add(p, small=e)
    return sums.exact(), squares.exact()


def cholesky_exact(
    scatter: Sequence[Sequence[Fraction]], *, digits: int = 60, floor: float = 2.0**-90
) -> np.ndarray:
    """Return the upper-triangular R (float64) with RᵀR = ``scatter`` (a symmetric positive
    semi-definite matrix of exact rationals), computed in ``digits``-digit decimal arithmetic and
    rounded once, so R carries the digits a QR of the centred rows would.

    A pivot at or below ``floor`` times its diagonal entry (a column that is, to about 27
    digits, a combination of the ones before it) gives a zero row, as for rank-deficient data.
    """
    size = len(scatter)
    r = np.zeros((size, size))
    with localcontext() as context:
        context.prec = digits
        a = [[Decimal(v.numerator) / Decimal(v.denominator) for v in row] for row in scatter]
        rows: list[list[Decimal]] = []
        zero = Decimal(0)
        for i in range(size):
            pivot = a[i][i] - sum((row[i] * row[i] for row in rows), zero)
            line = [zero] * size
            if pivot > a[i][i] * Decimal(floor) and pivot > 0:
                root = pivot.sqrt()
                line[i] = root
                for j in range(i + 1, size):
                    line[j] = (a[i][j] - sum((row[i] * row[j] for row in rows), zero)) / root
            rows.append(line)
        for i, line in enumerate(rows):
            r[i] = [float(v) for v in line]
    return r
