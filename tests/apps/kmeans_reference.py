"""An independent reference for ``kmeans``: the documented start, re-implemented here.

The app's own twin (``KMeans.centralized``) starts scikit-learn from the app's own
``greedy_initial_centers``, so a bug in the seeding shared by both sides would pass. This module
re-implements the seeding from its description (docs/apps/kmeans.md, "How it runs") in plain
numpy, sharing no function with ``fedflow.apps.kmeans``:

1. the pooled mean x̄ and population standard deviation σ of every column;
2. the pool ``x̄ + σ · default_rng(seed).uniform(-1, 1, size=(10·k, d))``;
3. k times: the candidate not yet chosen whose pick minimises Σ over rows of the squared distance
   to the nearest chosen centre (ties: the lowest index).

Then scikit-learn ``KMeans(init=those, n_init=1, algorithm="lloyd", tol, max_iter)`` runs Lloyd.
Defaults (``seed`` 0, ``tol`` 1e-4, ``max_iter`` 300) are the documented ones, written here again.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["independent_initial_centers", "kmeans_reference"]


def independent_initial_centers(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Return the k documented starting centres for the pooled rows ``x`` (n × d)."""
    x = np.asarray(x, dtype=np.float64)
    centre = x.mean(axis=0)
    spread = np.sqrt(((x - centre) ** 2).mean(axis=0))  # ddof = 0
    pool = centre + spread * np.random.default_rng(seed).uniform(-1, 1, size=(10 * k, x.shape[1]))
    # squared distance of every row to every candidate (n × 10k)
    to_candidate = np.stack([((x - c) ** 2).sum(axis=1) for c in pool], axis=1)
    nearest_chosen = np.full(len(x), np.inf)
    picked: list[int] = []
    for _ in range(k):
        cost = np.minimum(to_candidate, nearest_chosen[:, None]).sum(axis=0)
        cost[picked] = np.inf
        best = int(np.argmin(cost))
        picked.append(best)
        nearest_chosen = np.minimum(nearest_chosen, to_candidate[:, best])
    return pool[picked]


def kmeans_reference(pooled: pd.DataFrame, raw: dict[str, Any]) -> dict[str, Any]:
    """Return the kmeans result keys computed on ``pooled`` from the raw case parameters."""
    from sklearn.cluster import KMeans

    columns = list(raw["columns"])
    k = int(raw["k"])
    x = pooled[columns].to_numpy(dtype=np.float64)
    init = independent_initial_centers(x, k, int(raw.get("seed", 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when max_iter stops it
        fit = KMeans(
            n_clusters=k,
            init=init,
            n_init=1,
            algorithm="lloyd",
            tol=float(raw.get("tol", 1e-4)),
            max_iter=int(raw.get("max_iter", 300)),
        ).fit(x)
    return {
        "centers": fit.cluster_centers_.tolist(),
        "inertia": float(fit.inertia_),
        "iterations": int(fit.n_iter_),
        "cluster_sizes": np.bincount(fit.labels_, minlength=k).tolist(),
        "initial_centers": init.tolist(),
        "columns": columns,
    }
