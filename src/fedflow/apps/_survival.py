"""Pure survival maths shared by ``kaplan-meier`` and ``cox``: event tables, Kaplan–Meier curves,
the log-rank test, Cox risk-set sums and their Efron/Breslow merge, and Harrell's concordance.

Functions used at the sites (``event_table``, ``risk_set_sums``, ``linear_scores``,
``local_concordance``, ``cell_histograms``) use numpy only. The coordinator-side functions import
scipy lazily where they need it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedflow.apps._labels import value_label as group_label

__all__ = [
    "SCORE_BITS",
    "SCORE_RANGE",
    "SPLIT",
    "cell_histograms",
    "cox_terms",
    "cross_pairs",
    "event_table",
    "group_label",
    "initial_cells",
    "km_curve",
    "linear_scores",
    "local_concordance",
    "logrank_test",
    "median_survival",
    "merge_cells",
    "merge_event_tables",
    "risk_set_sums",
]

# --- Kaplan–Meier ------------------------------------------------------------------------------


def event_table(
    durations: np.ndarray, events: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (distinct times ascending, events at each, censored at each) of one sample."""
    times, inverse = np.unique(np.asarray(durations, dtype=np.float64), return_inverse=True)
    observed = np.asarray(events, dtype=np.float64) == 1
    n_events = np.bincount(inverse, weights=observed, minlength=len(times)).astype(np.int64)
    n_all = np.bincount(inverse, minlength=len(times)).astype(np.int64)
    return times, n_events, n_all - n_events


def merge_event_tables(
    tables: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the event table of the union of samples, given each sample's event table."""
    if not tables:
        empty = np.empty(0, dtype=np.int64)
        return np.empty(0), empty, empty
    all_times = np.concatenate([np.asarray(t[0], dtype=np.float64) for t in tables])
    times, inverse = np.unique(all_times, return_inverse=True)
    ev = np.concatenate([np.asarray(t[1], dtype=np.float64) for t in tables])
    ce = np.concatenate([np.asarray(t[2], dtype=np.float64) for t in tables])
    events = np.bincount(inverse, weights=ev, minlength=len(times)).astype(np.int64)
    censored = np.bincount(inverse, weights=ce, minlength=len(times)).astype(np.int64)
    return times, events, censored


def km_curve(
    times: np.ndarray, events: np.ndarray, censored: np.ndarray, alpha: float
) -> dict[str, np.ndarray]:
    """Return the Kaplan–Meier curve of an event table as arrays ``time``, ``at_risk``,
    ``events``, ``survival``, ``ci_lower``, ``ci_upper``.

    The timeline starts at 0 (added when no duration is 0), as lifelines' does. Survival is
    exp(Σ log((n − d)/n)); the interval is the exponential Greenwood (log(−log)) one, and 1 where
    it is undefined (no event yet), exactly as lifelines' ``KaplanMeierFitter`` computes them.
    """
    from scipy import stats

    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.int64)
    censored = np.asarray(censored, dtype=np.int64)
    if len(times) == 0 or times[0] > 0:
        times = np.concatenate([[0.0], times])
        events = np.concatenate([[0], events])
        censored = np.concatenate([[0], censored])
    removed = events + censored
    total = int(removed.sum())
    at_risk = total - np.concatenate([[0], np.cumsum(removed)[:-1]])
    n = at_risk.astype(np.float64)
    d = events.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s = np.cumsum(np.log(n - d) - np.log(n))
        var = d / (n * (n - d))
        var[np.isinf(var)] = 0.0
        cum_var = np.cumsum(var)
        survival = np.exp(log_s)
        v = np.log(survival)
        z = stats.norm.ppf(1.0 - alpha / 2.0)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(cum_var) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(cum_var) / v))
    lower[np.isnan(lower)] = 1.0
    upper[np.isnan(upper)] = 1.0
    return {
        "time": times,
        "at_risk": at_risk,
        "events": events,
        "survival": survival,
        "ci_lower": lower,
        "ci_upper": upper,
    }


def median_survival(times: np.ndarray, survival: np.ndarray) -> float | None:
    """Return the first time at which survival is at most 0.5, or None when it never is."""
    below = np.flatnonzero(np.asarray(survival) <= 0.5)
    return float(times[below[0]]) if below.size else None


def logrank_test(
    tables: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[float, float, int]:
    """Return (statistic, p-value, dof) of the multivariate log-rank test of k ≥ 2 groups.

    ``tables`` holds each group's event table. The statistic is Zᵀ V⁺ Z over the first k − 1
    groups (observed − expected events, hypergeometric covariance), as lifelines computes it.
    """
    from scipy import stats

    k = len(tables)
    times, _, _ = merge_event_tables(tables)
    observed = np.zeros((len(times), k))
    removed = np.zeros((len(times), k))
    for j, (t, ev, ce) in enumerate(tables):
        idx = np.searchsorted(times, np.asarray(t, dtype=np.float64))
        observed[idx, j] = ev
        removed[idx, j] = np.asarray(ev) + np.asarray(ce)
    n_j = removed.sum(0) - np.vstack([np.zeros(k), np.cumsum(removed, 0)[:-1]])
    d = observed.sum(1)
    n = n_j.sum(1)
    expected = n_j * (d / n)[:, None]
    z = observed.sum(0) - expected.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (n - d) / (n - 1)
    ratio[~np.isfinite(ratio)] = 1.0
    factor = ratio * d / n**2
    weighted = n_j * factor[:, None]
    v = np.diag((weighted * n[:, None]).sum(0)) - n_j.T @ weighted
    statistic = float(z[:-1] @ np.linalg.pinv(v[:-1, :-1]) @ z[:-1])
    dof = k - 1
    return statistic, float(stats.chi2.sf(statistic, dof)), dof


# --- Cox proportional hazards ------------------------------------------------------------------


_CHUNK = 4096
"""Rows per block when forming x xᵀ products, so memory stays O(block · p²), not O(n · p²)."""


def risk_set_sums(
    durations: np.ndarray,
    events: np.ndarray,
    x: np.ndarray,
    eta: np.ndarray,
    grid: np.ndarray,
    tied: np.ndarray,
) -> dict[str, np.ndarray]:
    """Return one sample's risk-set and tied-event sums at the event times ``grid``.

    ``S0[k] = Σ w``, ``S1[k] = Σ w x``, ``S2[k] = Σ w x xᵀ`` over rows with duration ≥ grid[k],
    with w = exp(eta). ``E0``, ``E1``, ``E2`` are the same sums over the rows with an event at
    ``grid[k]``, for the grid times selected by the boolean ``tied`` only (in that order).
    """
    order = np.argsort(durations, kind="stable")
    t = np.asarray(durations, dtype=np.float64)[order]
    w = np.exp(eta[order])
    xs = x[order]
    n, p = xs.shape
    k = len(grid)
    # a row with duration t is at risk at grid[j] for every j < bucket = #{grid ≤ t}
    bucket = np.searchsorted(grid, t, side="right")
    acc0, acc1, acc2 = np.zeros(k + 1), np.zeros((k + 1, p)), np.zeros((k + 1, p, p))
    for start in range(0, n, _CHUNK):
        rows = slice(start, start + _CHUNK)
        ids, first = np.unique(bucket[rows], return_index=True)  # buckets are sorted
        wc = w[rows]
        wx = xs[rows] * wc[:, None]
        acc0[ids] += np.add.reduceat(wc, first)
        acc1[ids] += np.add.reduceat(wx, first, axis=0)
        acc2[ids] += np.add.reduceat(wx[:, :, None] * xs[rows][:, None, :], first, axis=0)

    def at_risk(acc: np.ndarray) -> np.ndarray:
        return np.cumsum(acc[::-1], axis=0)[::-1][1:]

    tied_times = grid[tied]
    e0 = np.zeros(len(tied_times))
    e1 = np.zeros((len(tied_times), p))
    e2 = np.zeros((len(tied_times), p, p))
    if len(tied_times):
        pos = np.searchsorted(tied_times, t)
        hit = (np.asarray(events, dtype=np.float64)[order] == 1) & (pos < len(tied_times))
        hit[hit] = tied_times[pos[hit]] == t[hit]
        wx = xs[hit] * w[hit][:, None]
        np.add.at(e0, pos[hit], w[hit])
        np.add.at(e1, pos[hit], wx)
        np.add.at(e2, pos[hit], wx[:, :, None] * xs[hit][:, None, :])
    return {
        "S0": at_risk(acc0),
        "S1": at_risk(acc1),
        "S2": at_risk(acc2),
        "E0": e0,
        "E1": e1,
        "E2": e2,
    }


def cox_terms(
    deaths: np.ndarray,
    tied: np.ndarray,
    sums: dict[str, np.ndarray],
    event_x: np.ndarray,
    beta: np.ndarray,
    ties: str,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Return (log partial likelihood, gradient, information = −Hessian) at β.

    ``deaths[k]`` is the number of events at grid time k; ``sums`` the pooled risk-set sums (see
    ``risk_set_sums``, x centred as the sites centred it); ``event_x`` Σ x over all events.
    ``ties`` is ``"efron"`` or ``"breslow"``.
    """
    deaths = np.asarray(deaths, dtype=np.int64)
    s0, s1, s2 = sums["S0"], sums["S1"], sums["S2"]
    if ties == "efron" and len(sums["E0"]):
        # expand every event time into d terms with fraction l/d of its tied-event sums removed
        e0 = np.zeros_like(s0)
        e1 = np.zeros_like(s1)
        e2 = np.zeros_like(s2)
        e0[tied], e1[tied], e2[tied] = sums["E0"], sums["E1"], sums["E2"]
        k = np.repeat(np.arange(len(deaths)), deaths)
        first = np.repeat(np.cumsum(deaths) - deaths, deaths)
        frac = (np.arange(len(k)) - first) / deaths[k]
        phi0 = s0[k] - frac * e0[k]
        phi1 = s1[k] - frac[:, None] * e1[k]
        phi2 = s2[k] - frac[:, None, None] * e2[k]
        weights = np.ones(len(k))
    else:
        keep = deaths > 0
        phi0, phi1, phi2 = s0[keep], s1[keep], s2[keep]
        weights = deaths[keep].astype(np.float64)
    mean = phi1 / phi0[:, None]
    loglik = float(event_x @ beta - np.sum(weights * np.log(phi0)))
    gradient = event_x - (weights[:, None] * mean).sum(0)
    information = (weights[:, None, None] * (phi2 / phi0[:, None, None])).sum(0) - np.einsum(
        "k,ki,kj->ij", weights, mean, mean
    )
    return loglik, gradient, information


# --- concordance -------------------------------------------------------------------------------

SCORE_BITS = 24
"""Linear predictors are compared on a grid of 2⁻²⁴ (about 6e-8): closer scores count as tied."""
SCORE_RANGE = 1 << 34
"""Quantised scores are clipped to [−2³⁴, 2³⁴), |xβ| < 1024 (a fit with larger |xβ| overflows exp)."""
SPLIT = 64
"""Each refinement round splits an ambiguous score interval into this many sub-intervals."""


def linear_scores(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Return the quantised linear predictors round(xβ · 2²⁴) as int64 (row-wise, deterministic)."""
    eta = (x * beta[None, :]).sum(axis=1) if x.shape[1] else np.zeros(len(x))
    q = np.round(eta * float(1 << SCORE_BITS))
    return np.clip(q, -SCORE_RANGE, SCORE_RANGE - 1).astype(np.int64)


def _count_from(values: np.ndarray, start: np.ndarray, bound: np.ndarray, side: str) -> np.ndarray:
    """Return, per query i, #{j ≥ start[i] : values[j] < bound[i]} (``side="left"``) or ≤ (right).

    Square-root decomposition: whole blocks by binary search in their sorted copy, the partial
    block element by element, all vectorised over the queries — O(q · (n/B + B)) with B ≈ √n.
    """
    n = len(values)
    size = max(64, int(np.sqrt(max(n, 1))))
    n_blocks = -(-n // size) if n else 0
    padded = np.full(n_blocks * size, np.iinfo(np.int64).max, dtype=np.int64)
    padded[:n] = values
    blocks = np.sort(padded.reshape(n_blocks, size), axis=1)
    start = np.asarray(start, dtype=np.int64)
    bound = np.asarray(bound, dtype=np.int64)
    first_block = start // size
    counts = np.zeros(len(start), dtype=np.int64)
    for b in range(n_blocks):
        later = first_block < b
        if later.any():
            counts[later] += np.searchsorted(blocks[b], bound[later], side=side)  # type: ignore[call-overload]
    head = first_block * size
    less = np.less if side == "left" else np.less_equal
    for offset in range(size):
        index = head + offset
        take = (index >= start) & (index < n)
        if take.any():
            counts[take] += less(padded[index[take]], bound[take])
    return counts


def _concordance_order(
    durations: np.ndarray, events: np.ndarray, scores: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (scores in time order, first death position, first comparable position) per grid
    time. Rows are ordered by time, events before censored rows at the same time, so the deaths
    at grid[k] are positions [first, comparable) and the rows comparable with them the rest."""
    t = np.asarray(durations, dtype=np.float64)
    observed = np.asarray(events, dtype=np.float64) == 1
    order = np.lexsort((~observed, t))
    t_sorted = t[order]
    deaths_at = np.searchsorted(t_sorted, grid, side="left")
    n_deaths = np.zeros(len(grid), dtype=np.int64)
    dead_times = t[observed]
    if len(grid):
        idx = np.searchsorted(grid, dead_times)
        hit = idx < len(grid)
        hit[hit] = grid[idx[hit]] == dead_times[hit]
        n_deaths = np.bincount(idx[hit], minlength=len(grid)).astype(np.int64)
    return scores[order], deaths_at, deaths_at + n_deaths


def local_concordance(
    durations: np.ndarray, events: np.ndarray, scores: np.ndarray
) -> tuple[int, int, int]:
    """Return (concordant, tied, comparable) pair counts of one sample, as lifelines counts them.

    A pair is comparable when one record has an event strictly before the other's time, or an
    event at the time the other is censored. It is concordant when the earlier event has the
    higher score, tied when the scores are equal.
    """
    t = np.asarray(durations, dtype=np.float64)
    observed = np.asarray(events, dtype=np.float64) == 1
    grid = np.unique(t[observed])
    ordered, first, after = _concordance_order(t, events, np.asarray(scores), grid)
    per_time = after - first
    k = np.repeat(np.arange(len(grid)), per_time)
    offset = np.arange(len(k)) - np.repeat(np.cumsum(per_time) - per_time, per_time)
    death_pos = (first[k] + offset).astype(np.int64)
    start = after[k]
    below = _count_from(ordered, start, ordered[death_pos], "left")
    not_above = _count_from(ordered, start, ordered[death_pos], "right")
    pairs = int(((len(t) - after) * (after - first)).sum())
    return int(below.sum()), int((not_above - below).sum()), pairs


def initial_cells(n_times: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the first round's cells: every event-time index with the whole score range."""
    k = np.arange(n_times, dtype=np.int64)
    bounds = np.tile(np.array([-SCORE_RANGE, SCORE_RANGE], dtype=np.int64), (n_times, 1))
    return k, bounds


def _edges(bounds: np.ndarray) -> np.ndarray:
    """Return the SPLIT + 1 integer edges of each cell [lo, hi) (repeated where narrow)."""
    lo, hi = bounds[:, :1], bounds[:, 1:]
    j = np.arange(SPLIT + 1, dtype=np.int64)[None, :]
    return lo + ((hi - lo) * j) // SPLIT


def cell_histograms(
    durations: np.ndarray,
    events: np.ndarray,
    scores: np.ndarray,
    grid: np.ndarray,
    cell_k: np.ndarray,
    bounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one sample's (deaths, comparable) counts per cell and sub-interval (cells × SPLIT).

    Cell c is event time ``grid[cell_k[c]]`` and the score interval ``bounds[c]``; deaths are the
    records with an event at that time, comparable ones those with a later time or censored at it.
    Cells sharing an interval are counted together: O(n log n + cells · SPLIT) per call, as the
    intervals of one round are disjoint or equal.
    """
    ordered, first, after = _concordance_order(durations, events, np.asarray(scores), grid)
    by_score = np.argsort(ordered, kind="stable")  # time positions, in score order
    sorted_scores = ordered[by_score]
    cell_k = np.asarray(cell_k, dtype=np.int64)
    edges = _edges(bounds)
    deaths = np.zeros((len(cell_k), SPLIT), dtype=np.int64)
    comparable = np.zeros((len(cell_k), SPLIT), dtype=np.int64)
    if not len(cell_k):
        return deaths, comparable
    intervals, group_of = np.unique(bounds, axis=0, return_inverse=True)
    by_group = np.argsort(group_of.reshape(-1), kind="stable")
    splits = np.cumsum(np.bincount(group_of.reshape(-1), minlength=len(intervals)))[:-1]
    for (lo, hi), cells in zip(intervals, np.split(by_group, splits), strict=True):
        i0, i1 = np.searchsorted(sorted_scores, [lo, hi], side="left")
        inside = by_score[i0:i1]
        sub = np.searchsorted(edges[cells[0]], sorted_scores[i0:i1], side="right") - 1
        order = np.argsort(inside, kind="stable")
        positions, sub = inside[order], sub[order]
        ks = cell_k[cells]
        # rows (of this interval) before each breakpoint position, per sub-interval
        cut = np.searchsorted(positions, np.concatenate([first[ks], after[ks]]), side="left")
        cuts, which = np.unique(cut, return_inverse=True)
        segment = np.searchsorted(cuts, np.arange(len(positions)), side="right")
        hist = np.bincount(segment * SPLIT + sub, minlength=(len(cuts) + 1) * SPLIT)
        before = np.cumsum(hist.reshape(len(cuts) + 1, SPLIT), axis=0)[which.reshape(-1)]
        before_first, before_after = before[: len(ks)], before[len(ks) :]
        comparable[cells] = np.bincount(sub, minlength=SPLIT) - before_after
        deaths[cells] = before_after - before_first
    return deaths, comparable


def cross_pairs(deaths: np.ndarray, comparable: np.ndarray) -> int:
    """Return the number of comparable cross-site pairs in histograms covering whole score range.

    ``deaths`` and ``comparable`` are (sites × cells × SPLIT), as from the first round's cells.
    """
    d_site, c_site = deaths.sum(2), comparable.sum(2)  # sites × cells
    return int((d_site.sum(0) * c_site.sum(0)).sum() - (d_site * c_site).sum())


def merge_cells(
    cell_k: np.ndarray, bounds: np.ndarray, deaths: np.ndarray, comparable: np.ndarray
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Count the cross-site pairs the sites' cell histograms decide; return the cells to refine.

    ``deaths`` and ``comparable`` are (sites × cells × SPLIT). Returns the concordant and tied
    cross-site pair counts decided here, and the cells (time index, bounds) whose sub-intervals
    still hold cross-site pairs of unknown order. A sub-interval one unit wide holds equal scores
    only, so its pairs are ties: refinement always ends.
    """
    d_tot, c_tot = deaths.sum(0), comparable.sum(0)
    below_tot = np.cumsum(c_tot, axis=1) - c_tot
    below_site = np.cumsum(comparable, axis=2) - comparable
    concordant = int((d_tot * below_tot).sum() - (deaths * below_site).sum())
    same = d_tot * c_tot - (deaths * comparable).sum(0)  # cells × SPLIT, cross-site pairs only
    edges = _edges(bounds)
    width = edges[:, 1:] - edges[:, :-1]
    tied = int(same[(same > 0) & (width == 1)].sum())
    cells, subs = np.nonzero((same > 0) & (width > 1))
    new_bounds = np.column_stack([edges[cells, subs], edges[cells, subs + 1]]).astype(np.int64)
    return concordant, tied, cell_k[cells], new_bounds
