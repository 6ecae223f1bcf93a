"""Merge functions: pure, module-level, each tested against the pooled computation."""

from __future__ import annotations

__all__ = ["combine_moments"]


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
