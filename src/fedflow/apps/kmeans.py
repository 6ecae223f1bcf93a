"""``kmeans``: federated Lloyd iterations from a seeded, data-aware start that reveals no rows.

Initial centres ("greedy candidate seeding"). k-means++ picks data rows, which a federation must
not reveal; instead:

1. Phase ``moments`` (one round): each site returns its row count and, per column, Σx and Σx²
   (``Moments``) as exact dyadic rationals accurate to about 2⁻¹⁰⁰ (double-double sums,
   ``AccurateSum``); the coordinator forms the pooled mean x̄ and population deviation σ from
   them in exact arithmetic, so Σx²/n − x̄² cancels no digit a float64 result keeps (unless a
   column's mean exceeds its deviation by a factor of about 10⁸).
2. A pool of 10·k candidate points is drawn with ``numpy.random.default_rng(seed)`` uniformly in
   the box x̄ ± σ (``candidate_pool``): it depends on the seed and on aggregates only.
3. Phase ``seed`` (k rounds; greedy k-means++ on the pool): the coordinator sends the pool and the
   centres chosen so far (``Candidates``); each site returns, per candidate, Σ over its rows of
   the squared distance to the nearest of (chosen centres ∪ {candidate}) (``Potentials``). The
   candidate with the smallest pooled sum (the one that lowers the inertia most) becomes the next
   centre.

The same procedure runs on the pooled rows in the centralized twin (``greedy_initial_centers``),
which then hands those centres to scikit-learn ``KMeans(init=centres, n_init=1,
algorithm="lloyd", tol=tol, max_iter=max_iter)``; the result carries them as
``initial_centers``. (The fidelity suite does not trust this twin's start: its reference computes
the start independently, in the test code.)

Phase ``lloyd``: the coordinator sends the centres (``Centers``); each site assigns its rows to
the nearest centre and returns per-cluster counts and sums of rows and its inertia
(``ClusterSums``); new centres are pooled sums over pooled counts. Stopping follows scikit-learn
exactly: an update that changes no assignment (the new centres equal the old ones bit for bit)
ends the run; otherwise a total squared centre shift ≤ ``tol`` × (mean of the pooled column
variances) or ``max_iter`` updates end it, after one round of phase ``assign`` that assigns the
rows to the final centres for the inertia and cluster sizes (``Assignment``: ``ClusterSums``
without the sums).

Every phase is a sum over sites (``summed``), and the coordinator always works from the sums:
in the clear it adds the replies itself exactly as secure aggregation would (``sum_replies``:
exact, rounded once), so ``secure = true`` gives the same result bit for bit and reveals only
the sums over sites of everything listed below.

Streaming: every phase reads the site's rows once, batch by batch (``data.batches``). Between
rounds a site keeps, per row, the cluster it released the row in (an int16) and, with
``min_count`` > 1, a bit per row for each distinct row set it has released (``publish``) — never
the rows. A cluster's sum is accumulated per (cluster released before, nearest cluster) pair in
double-double and added exactly, so it is the exact sum rounded once whatever the batch size:
tiny batches give the same bits as one.

What a site reveals (in the clear): counts, means and spreads of its columns; per-candidate sums of distances and
its inertia (aggregates over all its rows); per-cluster counts and sums. ``min_count``: a site
holding fewer than ``min_count`` rows refuses. Against differencing, each site remembers every row
set it has released a sum over (all its rows, in ``moments``; each cluster it released; and the
rest — its rows in no released cluster, whose sum is the total minus the released ones) and keeps
any two of them equal or ≥ ``min_count`` rows apart, none holding 1 … ``min_count``−1 rows
(``publish``): rows move between clusters in groups, and a group that would break the rule stays
where the site released it before. So no difference of two releases — across rounds, across
clusters, or against the site's total — covers fewer than ``min_count`` rows; combinations of
three or more still can, and inertia and seeding potentials are not covered (docs/apps/kmeans.md).
With ``min_count`` > 1 the released clusters lag the nearest-centre assignment, so the run stops
near Lloyd's fixed point, not at it: a note says so and ``withheld`` counts the (site, round,
cluster) updates held back. A cluster that no row joins keeps its previous centre (scikit-learn
would move it onto a far data row, which a federation cannot reveal); a note says so.

Tolerance against the twin (``--compare``): 1e-8 relative (1e-12 absolute) on centres, inertia
and initial centres; ``iterations`` and ``cluster_sizes`` exactly (the assignments are discrete,
so with the same start both runs visit the same centres up to rounding, ~1e-13 measured on iris
and wine). Clusters are compared sorted by centre; ``converged`` and ``withheld`` have no twin.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import numpy as np

from fedflow.apps._merge_learning import AccurateSum, accurate_moment_sums, merge_cluster_sums
from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Exact,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    check_min_count,
    check_unique,
    numeric_columns,
    sum_replies,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Assignment",
    "Candidates",
    "Centers",
    "ClusterSums",
    "KMeans",
    "KMeansParams",
    "Moments",
    "Potentials",
    "candidate_pool",
    "candidate_potentials",
    "greedy_initial_centers",
    "nearest",
    "publish",
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
            check_unique(self.columns, "columns")


# -- phase payloads -----------------------------------------------------------------------------
class Moments(Payload, frozen=True):
    """A site's row count and, per column, Σx and Σx² (phase ``moments``; exact dyadic
    rationals accurate to about 2⁻¹⁰⁰, so the pooled variance Σx²/n − x̄² keeps its digits)."""

    n: int
    sums: Exact
    squares: Exact


class Candidates(Payload, frozen=True):
    """The candidate pool (10·k × d) and the centres chosen so far (taken × d) (phase ``seed``)."""

    candidates: np.ndarray
    chosen: np.ndarray


class Potentials(Payload, frozen=True):
    """Per candidate, Σ over the site's rows of the squared distance to chosen ∪ {candidate}."""

    potentials: np.ndarray


class Centers(Payload, frozen=True):
    """The current centres, k × d (phases ``lloyd`` and ``assign``)."""

    centers: np.ndarray


class Assignment(Payload, frozen=True):
    """A site's rows assigned to the centres: per-cluster counts (withheld clusters as 0), its
    inertia, and how many clusters it withheld (phase ``assign``)."""

    counts: np.ndarray
    inertia: float
    withheld: int


class ClusterSums(Assignment, frozen=True):
    """An ``Assignment`` with the per-cluster sums of rows, k × d (phase ``lloyd``)."""

    sums: np.ndarray


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


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def publish(
    labels: np.ndarray, k: int, min_count: int, published: np.ndarray, released: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (the membership a site releases this round, the updated memory of released sets).

    ``published``: per row, the cluster the site last released it in (``k``: none yet — the
    rest, whose sum is the site's total minus the released clusters). ``released``: the row
    sets (``np.packbits`` masks, one per line) it has released a sum over. Rows whose nearest
    centre changed move in groups (from one cluster to another), largest first; a group moves
    only if both clusters it changes stay empty or hold ≥ ``min_count`` rows and differ from
    every remembered set by no row or by ≥ ``min_count`` rows; then every remaining row moves
    at once if each cluster that changes passes the same test. Groups that cannot move stay
    where they were released before, so the site releases sums over a membership that lags its
    nearest-centre assignment by fewer than ``min_count`` rows per group.
    """
    current = published.copy()

    def fits(mask: np.ndarray) -> bool:
        size = int(mask.sum())
        if size == 0:
            return True
        if size < min_count:
            return False
        apart = _POPCOUNT[np.bitwise_xor(released, np.packbits(mask))].sum(axis=1)
        return bool(np.all((apart == 0) | (apart >= min_count)))

    moved = np.flatnonzero(labels != current)
    pairs = current[moved].astype(np.int64) * (k + 1) + labels[moved].astype(np.int64)
    groups = sorted(
        (
            (moved[pairs == pair], int(pair) // (k + 1), int(pair) % (k + 1))
            for pair in np.unique(pairs)
        ),
        key=lambda g: (-len(g[0]), g[1], g[2]),
    )
    for rows, source, target in groups:
        trial = current.copy()
        trial[rows] = target
        if fits(trial == source) and fits(trial == target):
            current = trial
    if not np.array_equal(current, labels):  # small groups may move together
        changed = np.union1d(current[current != labels], labels[current != labels])
        if all(fits(labels == j) for j in changed):
            current = labels.copy()
    for j in range(k + 1):
        mask = current == j
        if mask.any():
            line = np.packbits(mask)
            if not np.any(np.all(released == line, axis=1)):
                released = np.vstack([released, line])
    return current, released


def _label_dtype(k: int) -> type[np.signedinteger[Any]]:
    """The smallest integer type holding the labels 0 … k (k: the rest, released nowhere)."""
    return np.int16 if k < np.iinfo(np.int16).max else np.int32


def _start_memory(n: int, k: int, ctx: SiteContext) -> None:
    """Remember (once per run) that every row was released in one sum (``moments``: the site's
    total), and that no row has been released in a cluster yet (label ``k``, the rest)."""
    if "published" not in ctx.state:
        ctx.state["published"] = np.full(n, k, dtype=_label_dtype(k))
        if ctx.min_count > 1:  # with min_count = 1 every row set may be released
            ctx.state["released"] = np.packbits(np.ones(n, dtype=bool))[None, :]


def _assign(
    batches: Iterator[np.ndarray], n: int, centers: np.ndarray, ctx: SiteContext, *, sums: bool
) -> tuple[np.ndarray, np.ndarray | None, int, float]:
    """Assign a site's rows (read batch by batch) to ``centers`` and release the membership
    ``publish`` allows; return (its per-cluster counts, the per-cluster sums of rows if ``sums``,
    how many clusters it holds back, the inertia).

    One pass: besides each row's nearest centre (kept as a label per row, never the rows), the
    pass sums the rows per (cluster released before, nearest cluster) pair. ``publish`` moves
    rows in whole pairs, so a released cluster's sum is the sum of its pairs' sums. Those are
    kept as double-doubles (``AccurateSum``) and added exactly, so the float64 a site sends is
    its cluster's exact sum rounded once, whatever the batches or the pairs: the same membership
    gives the same bits (the stopping rule "no assignment changed" compares centres bit for bit).
    """
    k, d = centers.shape
    _start_memory(n, k, ctx)
    published: np.ndarray = ctx.state["published"]
    labels = np.empty(n, dtype=published.dtype)
    pair_sums: dict[int, AccurateSum] = {}
    first_row: dict[int, int] = {}  # one row of each pair, to look up where the pair went
    inertia = AccurateSum(())
    start = 0
    for x in batches:
        nearest_label, dist = nearest(x, centers)
        stop = start + len(x)
        labels[start:stop] = nearest_label
        inertia.add(dist)
        if sums:
            pairs = published[start:stop].astype(np.int64) * k + nearest_label
            order = np.argsort(pairs, kind="stable")
            ordered = pairs[order]
            cuts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            rows = x[order]
            for key, lo, hi in zip(
                ordered[cuts].tolist(), cuts.tolist(), [*cuts[1:].tolist(), len(x)], strict=True
            ):
                pair_sums.setdefault(key, AccurateSum((d,))).add(rows[lo:hi])
                first_row.setdefault(key, start + int(order[lo]))
        start = stop
    if start != n:
        raise DataError(f"the site's batches held {start} rows, not {n}")
    if ctx.min_count > 1:
        released, ctx.state["released"] = publish(
            labels, k, ctx.min_count, published, ctx.state["released"]
        )
    else:
        released = labels
    ctx.state["published"] = released
    counts = np.bincount(released, minlength=k + 1)[:k].astype(np.int64)
    truth = np.bincount(labels, minlength=k)
    behind = sum(1 for j in range(k) if truth[j] and not np.array_equal(released == j, labels == j))
    cluster_sums = None
    if sums:
        exact = [[Fraction(0)] * d for _ in range(k + 1)]
        for key, total in pair_sums.items():  # every row of a pair went the same way
            target = exact[int(released[first_row[key]])]
            for j, value in enumerate(total.exact()):
                target[j] += value
        cluster_sums = np.array([[float(v) for v in row] for row in exact[:k]]).reshape(k, d)
    return counts, cluster_sums, behind, float(sum(inertia.exact(), Fraction(0)))


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


@dataclass
class _Run:
    """The coordinator's state of one run (in ``CoordinatorContext.state["kmeans"]``)."""

    pool: np.ndarray
    shift_tol: float
    taken: list[int] = field(default_factory=list)
    centers: np.ndarray | None = None
    initial: np.ndarray | None = None
    iterations: int = 0
    converged: bool = False
    withheld: int = 0
    empty: set[int] = field(default_factory=set)


R = TypeVar("R", bound=Payload)


def _total(replies: Mapping[str, R], kind: type[R], ctx: CoordinatorContext) -> R:
    """The sum over sites of a phase's replies: as secure aggregation delivers it (``SUM``), or
    the same sum taken here (``sum_replies``: exact, rounded once), so a run gives the same
    numbers with and without ``secure = true``."""
    if ctx.secure:
        return replies[SUM]
    return sum_replies(replies, kind)


class KMeans(App[KMeansParams]):
    """k-means clustering (Lloyd): centres, inertia, iterations, cluster sizes."""

    name = "kmeans"
    reference = "scikit-learn KMeans"
    Params = KMeansParams
    phases = {
        "moments": Phase(Empty, Moments, summed=True),
        "seed": Phase(Candidates, Potentials, summed=True),
        "lloyd": Phase(Centers, ClusterSums, summed=True),
        "assign": Phase(Centers, Assignment, summed=True),
    }
    secure = True
    streaming = True
    tolerances = {"iterations": (0.0, 0.0), "cluster_sizes": (0.0, 0.0)}

    def resolve(self, params: KMeansParams, columns: Mapping[str, str]) -> KMeansParams:
        if params.columns is not None:
            return params
        numeric = numeric_columns(columns)
        if not numeric:
            raise AppError("app 'kmeans': the sites' data has no numeric column")
        return msgspec.structs.replace(params, columns=numeric)

    def columns(self, params: KMeansParams) -> dict[str, ColumnKind]:
        return {c: "numeric" for c in params.columns or []}

    # -- site ---------------------------------------------------------------------------------
    @staticmethod
    def _batches(data: Table, params: KMeansParams, ctx: SiteContext) -> Iterator[np.ndarray]:
        """The site's rows as float64 matrices, batch by batch (checked against min_count)."""
        check_min_count(data.n_rows, ctx.min_count, "the site's rows")
        columns = list(params.columns or [])
        for batch in data.batches(columns):
            yield batch.matrix(columns)

    def local_moments(
        self, data: Table, params: KMeansParams, request: Empty, ctx: SiteContext
    ) -> Moments:
        d = len(params.columns or [])
        try:
            sums, squares = accurate_moment_sums(self._batches(data, params, ctx), d)
        except ValueError as exc:
            raise DataError(
                f"the site's columns {', '.join(params.columns or [])}: {exc}"
            ) from None
        return Moments(n=data.n_rows, sums=sums, squares=squares)

    def local_seed(
        self, data: Table, params: KMeansParams, request: Candidates, ctx: SiteContext
    ) -> Potentials:
        candidates = np.asarray(request.candidates, dtype=np.float64)
        chosen = np.asarray(request.chosen, dtype=np.float64).reshape(-1, candidates.shape[1])
        total = np.zeros(len(candidates))
        for x in self._batches(data, params, ctx):
            total += candidate_potentials(x, chosen, candidates)
        return Potentials(potentials=total)

    def local_lloyd(
        self, data: Table, params: KMeansParams, request: Centers, ctx: SiteContext
    ) -> ClusterSums:
        centers = np.asarray(request.centers, dtype=np.float64)
        counts, sums, behind, inertia = _assign(
            self._batches(data, params, ctx), data.n_rows, centers, ctx, sums=True
        )
        assert sums is not None
        return ClusterSums(counts=counts, inertia=inertia, withheld=behind, sums=sums)

    def local_assign(
        self, data: Table, params: KMeansParams, request: Centers, ctx: SiteContext
    ) -> Assignment:
        centers = np.asarray(request.centers, dtype=np.float64)
        counts, _, behind, inertia = _assign(
            self._batches(data, params, ctx), data.n_rows, centers, ctx, sums=False
        )
        return Assignment(counts=counts, inertia=inertia, withheld=behind)

    # -- coordinator --------------------------------------------------------------------------
    def aggregate_moments(
        self, replies: Mapping[str, Moments], params: KMeansParams, ctx: CoordinatorContext
    ) -> Step:
        total = _total(replies, Moments, ctx)
        n = int(total.n)
        if n < params.k:
            raise AppError(f"app 'kmeans': k = {params.k} exceeds the {n} rows")
        mean = [s / n for s in total.sums]
        variance = np.array(
            [
                float(max(q / n - m * m, Fraction(0)))
                for q, m in zip(total.squares, mean, strict=True)
            ]
        )
        run = ctx.state["kmeans"] = _Run(
            pool=candidate_pool(
                np.array([float(m) for m in mean]), np.sqrt(variance), params.k, params.seed
            ),
            shift_tol=float(np.mean(variance)) * params.tol,
        )
        return self._seed_round(run)

    def aggregate_seed(
        self, replies: Mapping[str, Potentials], params: KMeansParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["kmeans"]
        potentials = np.asarray(_total(replies, Potentials, ctx).potentials, dtype=np.float64)
        run.taken.append(_pick(potentials, run.taken))
        if len(run.taken) < params.k:
            return self._seed_round(run)
        run.centers = run.initial = run.pool[run.taken]
        return Continue("lloyd", Centers(centers=run.centers))

    def aggregate_lloyd(
        self, replies: Mapping[str, ClusterSums], params: KMeansParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["kmeans"]
        total = _total(replies, ClusterSums, ctx)
        counts, inertia = self._tally(total, run, ctx)
        centers = run.centers
        assert centers is not None
        new, _, empty = merge_cluster_sums([total.counts], [total.sums], centers)
        for j in empty:
            if j not in run.empty:
                run.empty.add(j)
                ctx.notes.append(
                    f"kmeans: cluster {j} lost all its rows in round {ctx.round}; "
                    "its centre stays where it was"
                )
        run.iterations += 1
        run.centers = new
        if run.iterations > 1 and np.array_equal(new, centers):  # no assignment changed
            return self._done(params, run, inertia, counts, converged=True)
        shift = float(((new - centers) ** 2).sum())
        if shift <= run.shift_tol or run.iterations >= params.max_iter:
            run.converged = shift <= run.shift_tol
            return Continue("assign", Centers(centers=new))
        return Continue("lloyd", Centers(centers=new))

    def aggregate_assign(
        self, replies: Mapping[str, Assignment], params: KMeansParams, ctx: CoordinatorContext
    ) -> Step:
        run: _Run = ctx.state["kmeans"]
        counts, inertia = self._tally(_total(replies, Assignment, ctx), run, ctx)
        if not run.converged:
            ctx.notes.append(f"kmeans did not converge in {params.max_iter} iterations")
        return self._done(params, run, inertia, counts, converged=run.converged)

    @staticmethod
    def _tally(total: Assignment, run: _Run, ctx: CoordinatorContext) -> tuple[np.ndarray, float]:
        """Return the pooled counts and inertia of an assignment; note withheld clusters."""
        withheld = int(total.withheld)
        if withheld:
            run.withheld += withheld
            ctx.notes.append(
                f"kmeans round {ctx.round}: sites withheld {withheld} cluster update(s) (a site "
                f"releases no cluster of fewer than min_count = {ctx.min_count} rows and moves "
                f"rows between clusters only in groups that keep each ≥ {ctx.min_count} rows from "
                "what it released before); the centres use the clusters as the sites released them"
            )
        return np.asarray(total.counts, dtype=np.int64), float(total.inertia)

    @staticmethod
    def _seed_round(run: _Run) -> Continue:
        pool = run.pool
        chosen = pool[run.taken] if run.taken else np.zeros((0, pool.shape[1]))
        return Continue("seed", Candidates(candidates=pool, chosen=chosen))

    def _done(
        self,
        params: KMeansParams,
        run: _Run,
        inertia: float,
        counts: np.ndarray,
        *,
        converged: bool,
    ) -> Done:
        return Done(
            {
                "centers": np.asarray(run.centers).tolist(),
                "inertia": inertia,
                "iterations": int(run.iterations),
                "converged": bool(converged),
                "cluster_sizes": [int(c) for c in counts],
                "initial_centers": np.asarray(run.initial).tolist(),
                "columns": list(params.columns or []),
                "withheld": int(run.withheld),
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
            "columns": result["columns"],
        }
