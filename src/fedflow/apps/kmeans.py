"""``kmeans``: federated Lloyd iterations from a seeded, data-aware start that reveals no rows.

Initial centres ("greedy candidate seeding"). k-means++ picks data rows, which a federation must
not reveal; instead:

1. Round 1: each site returns count, mean and sum of squared deviations per column; the
   coordinator merges them (Chan) into the pooled mean x̄ and population deviation σ.
2. A pool of 10·k candidate points is drawn with ``numpy.random.default_rng(seed)`` uniformly in
   the box x̄ ± σ (``candidate_pool``): it depends on the seed and on aggregates only.
3. Rounds 2 … k+1 (greedy k-means++ on the pool): the coordinator sends the pool and the centres
   chosen so far; each site returns, per candidate, Σ over its rows of the squared distance to the
   nearest of (chosen centres ∪ {candidate}). The candidate with the smallest pooled sum (the
   one that lowers the inertia most) becomes the next centre.

The same procedure runs on the pooled rows in the centralized twin (``greedy_initial_centers``),
which then hands those centres to scikit-learn ``KMeans(init=centres, n_init=1,
algorithm="lloyd", tol=tol, max_iter=max_iter)``; the result carries them as
``initial_centers``.

Lloyd rounds: the coordinator sends the centres; each site assigns its rows to the nearest centre
and returns per-cluster counts and sums of rows and its inertia; new centres are pooled sums over
pooled counts. Stopping follows scikit-learn exactly: an update that changes no assignment
(the new centres equal the old ones bit for bit) ends the run; otherwise a total squared centre
shift ≤ ``tol`` × (mean of the pooled column variances) or ``max_iter`` updates end it, after
one more round that assigns the rows to the final centres for the inertia and cluster sizes.

What a site reveals: counts, means and spreads of its columns; per-candidate sums of distances and
its inertia (aggregates over all its rows); per-cluster counts and sums. ``min_count``: a site
holding fewer than ``min_count`` rows refuses; a cluster holding 0 < c < ``min_count`` of a site's
rows in a round is withheld by that site (reported as count 0 and sum 0), so the centres then
leave those rows out and the result is no longer the pooled Lloyd iteration: a note says so and
``withheld`` counts the withheld (site, round, cluster) contributions. A cluster that no row
joins keeps its previous centre (scikit-learn would move it onto a far data row, which a
federation cannot reveal); a note says so.

Tolerance against the twin: 1e-8 relative on centres, inertia and cluster sizes, iterations
equal (the assignments are discrete, so with the same start both runs visit the same centres up
to rounding, ~1e-13 measured on iris and wine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fedflow.apps._merge import combine_moments
from fedflow.apps._merge_learning import merge_cluster_sums
from fedflow.apps.base import (
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Params,
    Payload,
    SiteContext,
    Step,
    Table,
    check_min_count,
)
from fedflow.errors import AppError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "KMeans",
    "KMeansParams",
    "candidate_pool",
    "candidate_potentials",
    "greedy_initial_centers",
    "nearest",
]

_BLOCK = 1 << 22  # float64 cells per distance block (32 MiB): rows per block = _BLOCK / (k·d)


def _rows_per_block(points: np.ndarray) -> int:
    return max(1, _BLOCK // max(1, points.size))


class KMeansParams(Params, frozen=True):
    """``columns`` (default: every numeric column), ``k``, ``max_iter``, ``seed``, ``tol``
    (scikit-learn's: relative to the mean column variance; 0 = until no assignment changes)."""

    k: int
    columns: list[str] | None = None
    max_iter: int = 300
    seed: int = 0
    tol: float = 1e-4

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.max_iter < 1:
            raise ValueError("max_iter must be at least 1")
        if not self.tol >= 0:
            raise ValueError("tol must be zero or positive")
        if self.columns is not None:
            if not self.columns:
                raise ValueError("columns is empty")
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if dupes:
                raise ValueError(f"columns listed twice: {', '.join(dupes)}")


# -- numpy helpers shared by the sites and the twin ---------------------------------------------
def nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (index of the nearest centre, squared distance to it) for every row of ``x``.

    Ties go to the lowest index, as in scikit-learn.
    """
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x))
    step = _rows_per_block(centers)
    for start in range(0, len(x), step):
        block = x[start : start + step]
        d2 = ((block[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        best = np.argmin(d2, axis=1)
        labels[start : start + step] = best
        dist[start : start + step] = d2[np.arange(len(block)), best]
    return labels, dist


def candidate_pool(mean: np.ndarray, std: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Return 10·k seeded candidate points drawn uniformly in the box ``mean ± std``."""
    rng = np.random.default_rng(seed)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    return mean + std * rng.uniform(-1.0, 1.0, size=(10 * k, len(mean)))


def candidate_potentials(x: np.ndarray, chosen: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Return, per candidate c, Σ over rows of min(squared distance to ``chosen`` ∪ {c})."""
    out = np.zeros(len(candidates))
    step = _rows_per_block(candidates)
    for start in range(0, len(x), step):
        block = x[start : start + step]
        d2 = ((block[:, None, :] - candidates[None, :, :]) ** 2).sum(axis=2)
        if len(chosen):
            _, current = nearest(block, chosen)
            d2 = np.minimum(d2, current[:, None])
        out += d2.sum(axis=0)
    return out


def _pick(potentials: np.ndarray, taken: list[int]) -> int:
    """Return the index of the smallest potential among candidates not yet taken."""
    masked = np.array(potentials, dtype=np.float64, copy=True)
    masked[taken] = np.inf
    return int(np.argmin(masked))


def greedy_initial_centers(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Return the k initial centres the federated run chooses, computed on pooled rows ``x``."""
    pool = candidate_pool(x.mean(axis=0), x.std(axis=0), k, seed)
    taken: list[int] = []
    for _ in range(k):
        taken.append(_pick(candidate_potentials(x, pool[taken], pool), taken))
    return pool[taken]


class KMeans(App[KMeansParams]):
    """k-means clustering (Lloyd): centres, inertia, iterations, cluster sizes."""

    name = "kmeans"
    reference = "scikit-learn KMeans"
    Params = KMeansParams

    def resolve(self, params: KMeansParams, columns: Mapping[str, str]) -> KMeansParams:
        if params.columns is not None:
            return params
        numeric = [c for c, kind in columns.items() if kind in ("int", "float")]
        if not numeric:
            raise AppError("app 'kmeans': the sites' data has no numeric column")
        return msgspec.structs.replace(params, columns=numeric)

    def columns(self, params: KMeansParams) -> dict[str, ColumnKind]:
        return {c: "numeric" for c in params.columns or []}

    # -- site ---------------------------------------------------------------------------------
    def local(
        self, data: Table, params: KMeansParams, payload: Payload, ctx: SiteContext
    ) -> Payload:
        x = ctx.state.get("x")
        if x is None:
            x = ctx.state["x"] = data.matrix(params.columns or [])
            check_min_count(len(x), ctx.min_count, "the site's rows")
        stage = payload.get("stage")
        if stage == "moments":
            mean = x.mean(axis=0)
            return {"n": len(x), "mean": mean, "m2": ((x - mean) ** 2).sum(axis=0)}
        if stage == "seed":
            chosen = np.asarray(payload["chosen"], dtype=np.float64).reshape(-1, x.shape[1])
            candidates = np.asarray(payload["candidates"], dtype=np.float64)
            return {"potentials": candidate_potentials(x, chosen, candidates)}
        centers = np.asarray(payload["centers"], dtype=np.float64)
        labels, dist = nearest(x, centers)
        counts = np.bincount(labels, minlength=len(centers)).astype(np.int64)
        small = (counts > 0) & (counts < ctx.min_count)
        counts[small] = 0
        out: dict[str, Any] = {
            "inertia": float(dist.sum()),
            "counts": counts,
            "withheld": int(small.sum()),
        }
        if stage == "lloyd":
            sums = np.zeros_like(centers)
            np.add.at(sums, labels, x)
            sums[small] = 0.0
            out["sums"] = sums
        return out

    # -- coordinator --------------------------------------------------------------------------
    def start(self, params: KMeansParams, ctx: CoordinatorContext) -> Step:
        ctx.state.update(withheld=0, empty=set())
        return Continue({"stage": "moments"})

    def aggregate(
        self, replies: Mapping[str, Payload], params: KMeansParams, ctx: CoordinatorContext
    ) -> Step:
        ordered = [replies[name] for name in sorted(replies)]  # a fixed summation order
        state = ctx.state
        if "pool" not in state:  # after the moments round
            d = len(params.columns or [])
            moments = [
                combine_moments(
                    [(float(r["n"]), float(r["mean"][j]), float(r["m2"][j])) for r in ordered]
                )
                for j in range(d)
            ]
            n = moments[0][0]
            if n < params.k:
                raise AppError(f"app 'kmeans': k = {params.k} exceeds the {int(n)} rows")
            mean = np.array([m[1] for m in moments])
            variance = np.array([m[2] / m[0] for m in moments])
            state.update(
                pool=candidate_pool(mean, np.sqrt(variance), params.k, params.seed),
                taken=[],
                shift_tol=float(np.mean(variance)) * params.tol,
            )
            return self._seed_round(state)
        if "centers" not in state:  # after a seeding round
            potentials = np.sum([np.asarray(r["potentials"]) for r in ordered], axis=0)
            state["taken"].append(_pick(potentials, state["taken"]))
            if len(state["taken"]) < params.k:
                return self._seed_round(state)
            state["centers"] = state["pool"][state["taken"]]
            state["initial"] = state["centers"]
            state["iterations"] = 0
            return Continue({"stage": "lloyd", "centers": state["centers"]})
        withheld = sum(int(r["withheld"]) for r in ordered)
        if withheld:
            state["withheld"] += withheld
            ctx.notes.append(
                f"kmeans round {ctx.round}: sites withheld {withheld} cluster contribution(s) "
                f"of fewer than min_count = {ctx.min_count} rows; the centres leave them out"
            )
        counts = np.sum([np.asarray(r["counts"]) for r in ordered], axis=0)
        inertia = float(sum(float(r["inertia"]) for r in ordered))
        if "final" in state:  # after the final assignment round
            if not state["final"]:
                ctx.notes.append(f"kmeans did not converge in {params.max_iter} iterations")
            return self._done(params, state, inertia, counts, converged=state["final"])
        centers = state["centers"]
        new, _, empty = merge_cluster_sums(
            [r["counts"] for r in ordered], [r["sums"] for r in ordered], centers
        )
        for j in empty:
            if j not in state["empty"]:
                state["empty"].add(j)
                ctx.notes.append(
                    f"kmeans: cluster {j} lost all its rows in round {ctx.round}; "
                    "its centre stays where it was"
                )
        state["iterations"] += 1
        state["centers"] = new
        if state["iterations"] > 1 and np.array_equal(new, centers):  # no assignment changed
            return self._done(params, state, inertia, counts, converged=True)
        shift = float(((new - centers) ** 2).sum())
        if shift <= state["shift_tol"] or state["iterations"] >= params.max_iter:
            state["final"] = shift <= state["shift_tol"]
            return Continue({"stage": "assign", "centers": new})
        return Continue({"stage": "lloyd", "centers": new})

    @staticmethod
    def _seed_round(state: dict[str, Any]) -> Continue:
        pool = state["pool"]
        chosen = pool[state["taken"]] if state["taken"] else np.zeros((0, pool.shape[1]))
        return Continue({"stage": "seed", "candidates": pool, "chosen": chosen})

    def _done(
        self,
        params: KMeansParams,
        state: dict[str, Any],
        inertia: float,
        counts: np.ndarray,
        *,
        converged: bool,
    ) -> Done:
        return Done(
            {
                "centers": np.asarray(state["centers"]).tolist(),
                "inertia": inertia,
                "iterations": int(state["iterations"]),
                "converged": bool(converged),
                "cluster_sizes": [int(c) for c in counts],
                "initial_centers": np.asarray(state["initial"]).tolist(),
                "columns": list(params.columns or []),
                "withheld": int(state["withheld"]),
            }
        )

    # -- reference ----------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: KMeansParams) -> dict[str, Any]:
        import warnings

        from sklearn.cluster import KMeans as SkKMeans

        x = pooled[list(params.columns or [])].to_numpy(dtype=np.float64)
        init = greedy_initial_centers(x, params.k, params.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = SkKMeans(
                n_clusters=params.k,
                init=init,
                n_init=1,
                algorithm="lloyd",
                tol=params.tol,
                max_iter=params.max_iter,
            ).fit(x)
        sizes = np.bincount(fit.labels_, minlength=params.k)
        return {
            "centers": fit.cluster_centers_.tolist(),
            "inertia": float(fit.inertia_),
            "iterations": int(fit.n_iter_),
            "cluster_sizes": [int(c) for c in sizes],
            "initial_centers": init.tolist(),
            "columns": list(params.columns or []),
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Clusters sorted canonically (by centre, lexicographically) with their sizes."""
        centers = [list(c) for c in result["centers"]]
        order = sorted(range(len(centers)), key=lambda j: tuple(centers[j]))
        return {
            "centers": [centers[j] for j in order],
            "cluster_sizes": [result["cluster_sizes"][j] for j in order],
            "inertia": result["inertia"],
            "iterations": result["iterations"],
            "initial_centers": result["initial_centers"],
        }
