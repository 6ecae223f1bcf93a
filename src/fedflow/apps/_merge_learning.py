"""Merge functions of the learning apps (``glm``, ``pca``, ``kmeans``): pure, module-level, numpy.

Each is tested against the pooled computation in ``tests/apps/test_glm.py``, ``test_pca.py`` and
``test_kmeans.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "merge_centered_factors",
    "merge_cluster_sums",
    "r_factor",
    "stack_factors",
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
