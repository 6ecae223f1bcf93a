"""Pure survival maths shared by ``kaplan-meier`` and ``cox``: event tables, Kaplan–Meier curves,
the log-rank test, a grid of event times found from summed counts, Cox risk-set sums and their
Efron/Breslow merge, and Harrell's concordance counted from summed score histograms.

Everything a site computes is a sum over its rows, accumulated batch by batch (``event_table`` and
``merge_event_tables``, ``count_time_cells``, ``RiskSets``, ``cell_histograms``): a site never
needs all its rows at once, and the sums of several sites (or of several batches) are the sums of
their union. The site-side functions use numpy only; the coordinator-side ones import scipy
lazily where they need it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedflow.apps._labels import value_label as group_label
from fedflow.apps.base import Payload

__all__ = [
    "GRID_BUDGET",
    "MAX_COUNTS",
    "MIN_SPLIT_BITS",
    "SCORE_BITS",
    "SCORE_RANGE",
    "SPLIT",
    "RiskSets",
    "TimeCells",
    "TimeCounts",
    "TimeSearch",
    "cell_histograms",
    "check_cells",
    "check_time_cells",
    "count_cells",
    "count_time_cells",
    "cox_terms",
    "event_table",
    "first_time_cells",
    "group_label",
    "initial_cells",
    "key_times",
    "km_curve",
    "linear_scores",
    "logrank_test",
    "median_survival",
    "merge_event_tables",
    "refine_time_cells",
    "risk_set_sums",
    "split_bits",
    "time_keys",
    "total_pairs",
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


# --- a shared grid of times from summed counts --------------------------------------------------
#
# Under secure aggregation a site cannot send its distinct times: the coordinator would learn which
# site holds which time. Instead the times are found as a trie over order-preserving 64-bit keys
# of the float64 times. Each round the coordinator names the key prefixes (cells) that hold
# records; each site returns, per cell, its records per group and next few bits of the key, and
# how many of its records in the cell have each lower key bit set. Summed over sites, a cell whose
# records all have each bit set or all clear holds a single time, which the bit counts spell out;
# the other cells are split by their non-empty sub-cells for the next round. The coordinator
# learns only summed counts over unions of distinct times, all of which follow from the final
# summed count of records at each time.

GRID_BUDGET = 1 << 14
"""Counts per site and round while a time grid is refined, about (more when many cells remain:
each is split at least ``MIN_SPLIT_BITS`` bits)."""
MIN_SPLIT_BITS = 4
"""Each round splits a cell that holds several times by at least this many key bits."""
MAX_COUNTS = 1 << 20
"""A site refuses a round asking for more counts than this per cell (a malformed request); the
number of cells is bounded by the request itself."""

_FLIP = np.int64(0x7FFFFFFFFFFFFFFF)


def time_keys(times: np.ndarray) -> np.ndarray:
    """Return int64 keys in the order of the float64 ``times`` (no NaN): equal keys exactly for
    equal times (−0.0 and 0.0 are one time)."""
    bits = (np.asarray(times, dtype=np.float64) + 0.0).view(np.int64)
    return np.where(bits < 0, bits ^ _FLIP, bits)


def key_times(keys: np.ndarray) -> np.ndarray:
    """Return the float64 times of ``time_keys`` keys."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.ascontiguousarray(np.where(keys < 0, keys ^ _FLIP, keys)).view(np.float64)


def split_bits(shift: int, n_cells: int, n_groups: int = 1) -> int:
    """Return how many key bits to split the next round's ``n_cells`` cells by: as many as
    ``GRID_BUDGET`` counts allow, at least ``MIN_SPLIT_BITS`` and at most ``shift`` (the bits
    left)."""
    room = GRID_BUDGET // max(1, n_cells * n_groups)
    return max(1, min(shift, max(MIN_SPLIT_BITS, room.bit_length() - 1)))


class TimeCells(Payload, frozen=True):
    """To the sites: count records in the key cells ``prefixes`` (the key bits above ``shift``),
    split by their next ``bits`` bits, and their lower key bits (see ``count_time_cells``)."""

    shift: int
    bits: int
    prefixes: np.ndarray


class TimeCounts(Payload, frozen=True):
    """A site's reply to ``TimeCells``: its records per group, cell and sub-cell (``counts``,
    int64, groups × cells × 2^bits) and per cell how many have each of the ``shift`` lower key
    bits set (``bits_set``, int64, cells × shift); summed over sites."""

    counts: np.ndarray
    bits_set: np.ndarray


def first_time_cells(n_groups: int = 1) -> tuple[int, int, np.ndarray]:
    """Return the first round's (shift, bits, prefixes): the negative and non-negative keys."""
    return 63, split_bits(63, 2, n_groups), np.array([-1, 0], dtype=np.int64)


def check_time_cells(shift: int, bits: int, prefixes: np.ndarray, n_groups: int) -> None:
    """Raise ValueError for a request a site should not answer (malformed or oversized)."""
    if not 1 <= bits <= min(shift, 20) or shift > 63:
        raise ValueError(f"time cells: bits {bits} and shift {shift} out of range")
    if len(prefixes) and np.any(np.diff(prefixes) <= 0):
        raise ValueError("time cells: prefixes are not strictly increasing")
    if (n_groups << bits) + shift > MAX_COUNTS:
        raise ValueError(f"time cells: more than {MAX_COUNTS} counts asked per cell")


def count_time_cells(
    keys: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    shift: int,
    bits: int,
    prefixes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one sample's ``TimeCounts`` fields: its records per group, cell and next ``bits``
    key bits (groups × cells × 2^bits), and per cell its records with each of the ``shift`` lower
    key bits set (cells × shift). Cell c holds the keys whose bits above ``shift`` are
    ``prefixes[c]``; ``groups`` is each record's group index (in ``range(n_groups)``)."""
    keys = np.asarray(keys, dtype=np.int64)
    prefixes = np.asarray(prefixes, dtype=np.int64)
    size = 1 << bits
    counts = np.zeros((n_groups, len(prefixes), size), dtype=np.int64)
    bits_set = np.zeros((len(prefixes), shift), dtype=np.int64)
    if not len(prefixes) or not len(keys):
        return counts, bits_set
    parent = keys >> shift
    cell = np.searchsorted(prefixes, parent)
    hit = cell < len(prefixes)
    hit[hit] = prefixes[cell[hit]] == parent[hit]
    keys, cell = keys[hit], cell[hit]
    sub = (keys >> (shift - bits)) & (size - 1)
    flat = (np.asarray(groups, dtype=np.int64)[hit] * len(prefixes) + cell) * size + sub
    counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)
    for j in range(shift):
        bits_set[:, j] = np.bincount(cell[(keys >> j) & 1 == 1], minlength=len(prefixes))
    return counts, bits_set


def refine_time_cells(
    shift: int, bits: int, prefixes: np.ndarray, counts: np.ndarray, bits_set: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Return what a round's summed ``TimeCounts`` decide: the keys of the cells that hold a
    single time with the records per group at each (groups × keys), and the shift and prefixes
    of the cells still to split (none when every time is found)."""
    counts = np.asarray(counts, dtype=np.int64)
    bits_set = np.asarray(bits_set, dtype=np.int64)
    prefixes = np.asarray(prefixes, dtype=np.int64)
    if counts.shape[1:] != (len(prefixes), 1 << bits) or bits_set.shape != (len(prefixes), shift):
        raise ValueError(f"time cells: counts of shape {counts.shape} for {len(prefixes)} cells")
    n = counts.sum(axis=(0, 2))
    all_set = bits_set == n[:, None]
    single = (n > 0) & np.all((bits_set == 0) | all_set, axis=1)
    low = (all_set[single] * (np.int64(1) << np.arange(shift, dtype=np.int64))).sum(1)
    keys = (prefixes[single] << shift) | low
    found = counts[:, single, :].sum(2)
    rest = counts[:, ~single, :]
    cell, sub = np.nonzero(rest.sum(0))
    split = (prefixes[~single][cell] << bits) | sub
    if shift == bits:  # no bit left: each sub-cell is one key
        keys = np.concatenate([keys, split])
        found = np.concatenate([found, rest[:, cell, sub]], axis=1)
        split = split[:0]
    order = np.argsort(keys)
    return keys[order], found[:, order], shift - bits, split.astype(np.int64)


class TimeSearch:
    """The coordinator's side of finding the event times from summed ``TimeCounts``."""

    def __init__(self, n_groups: int = 1) -> None:
        self.n_groups = n_groups
        self.shift, self.bits, self.prefixes = first_time_cells(n_groups)
        self.keys: list[np.ndarray] = []
        self.found: list[np.ndarray] = []
        self.rounds = 0

    def request(self) -> TimeCells:
        """Return the next round's request."""
        return TimeCells(shift=self.shift, bits=self.bits, prefixes=self.prefixes)

    def add(self, summed: TimeCounts) -> bool:
        """Take a round's summed counts; return whether every time is found."""
        keys, found, self.shift, self.prefixes = refine_time_cells(
            self.shift, self.bits, self.prefixes, summed.counts, summed.bits_set
        )
        self.keys.append(keys)
        self.found.append(found)
        self.rounds += 1
        if not len(self.prefixes):
            return True
        self.bits = split_bits(self.shift, len(self.prefixes), self.n_groups)
        return False

    def times(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the times found (ascending) and the records per group at each (groups × K)."""
        keys = np.concatenate(self.keys) if self.keys else np.empty(0, dtype=np.int64)
        found = np.concatenate(self.found, axis=1) if self.found else np.empty((self.n_groups, 0))
        order = np.argsort(keys)
        return key_times(keys[order]), found[:, order].astype(np.int64)


# --- Cox proportional hazards ------------------------------------------------------------------


_CHUNK = 4096
"""Rows per block when forming x xᵀ products, so memory stays O(block · p²), not O(n · p²)."""


class RiskSets:
    """One site's risk-set and tied-event sums at the event times ``grid``, added up over batches.

    ``S0[k] = Σ w``, ``S1[k] = Σ w x``, ``S2[k] = Σ w x xᵀ`` over rows with duration ≥ grid[k],
    with w = exp(eta). ``E0``, ``E1``, ``E2`` are the same sums over the rows with an event at
    ``grid[k]``, for the grid times selected by the boolean ``tied`` only (in that order).

    Sort-free over the site: each batch adds its rows to the bucket of grid times they reach (a
    histogram onto the grid); ``sums()`` takes the reverse cumulative sum once at the end.
    """

    def __init__(self, grid: np.ndarray, tied: np.ndarray, p: int) -> None:
        self.grid = np.asarray(grid, dtype=np.float64)
        self.tied_times = self.grid[np.asarray(tied, dtype=bool)]
        k, m = len(self.grid), len(self.tied_times)
        self.acc0, self.acc1, self.acc2 = (
            np.zeros(k + 1),
            np.zeros((k + 1, p)),
            np.zeros((k + 1, p, p)),
        )
        self.e0, self.e1, self.e2 = np.zeros(m), np.zeros((m, p)), np.zeros((m, p, p))

    def add(
        self, durations: np.ndarray, events: np.ndarray, x: np.ndarray, eta: np.ndarray
    ) -> None:
        """Add a batch of rows: durations, 0/1 events, features x (centred) and eta = xβ."""
        t = np.asarray(durations, dtype=np.float64)
        # a row with duration t is at risk at grid[j] for every j < bucket = #{grid ≤ t}
        bucket = np.searchsorted(self.grid, t, side="right")
        order = np.argsort(bucket, kind="stable")
        bucket, w, xs = bucket[order], np.exp(eta[order]), x[order]
        for start in range(0, len(t), _CHUNK):
            rows = slice(start, start + _CHUNK)
            ids, first = np.unique(bucket[rows], return_index=True)  # buckets are sorted
            wc = w[rows]
            wx = xs[rows] * wc[:, None]
            self.acc0[ids] += np.add.reduceat(wc, first)
            self.acc1[ids] += np.add.reduceat(wx, first, axis=0)
            self.acc2[ids] += np.add.reduceat(wx[:, :, None] * xs[rows][:, None, :], first, axis=0)
        tied_times = self.tied_times
        if len(tied_times):
            t = t[order]
            pos = np.searchsorted(tied_times, t)
            hit = (np.asarray(events, dtype=np.float64)[order] == 1) & (pos < len(tied_times))
            hit[hit] = tied_times[pos[hit]] == t[hit]
            wx = xs[hit] * w[hit][:, None]
            np.add.at(self.e0, pos[hit], w[hit])
            np.add.at(self.e1, pos[hit], wx)
            np.add.at(self.e2, pos[hit], wx[:, :, None] * xs[hit][:, None, :])

    def sums(self) -> dict[str, np.ndarray]:
        """Return ``S0`` … ``E2`` of every row added so far."""

        def at_risk(acc: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.cumsum(acc[::-1], axis=0)[::-1][1:])

        return {
            "S0": at_risk(self.acc0),
            "S1": at_risk(self.acc1),
            "S2": at_risk(self.acc2),
            "E0": self.e0,
            "E1": self.e1,
            "E2": self.e2,
        }


def risk_set_sums(
    durations: np.ndarray,
    events: np.ndarray,
    x: np.ndarray,
    eta: np.ndarray,
    grid: np.ndarray,
    tied: np.ndarray,
) -> dict[str, np.ndarray]:
    """Return one sample's risk-set and tied-event sums at the event times ``grid`` (see
    ``RiskSets``), from all its rows at once."""
    sets = RiskSets(grid, tied, np.shape(x)[1])
    sets.add(durations, events, x, eta)
    return sets.sums()


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
#
# Harrell's C counts, over pairs of records, those where one had an event strictly before the
# other's time (or at the time the other was censored) and the earlier one had the higher risk
# score. Per event time t_k the sites send histograms of the scores of their events at t_k
# ("deaths") and of their records still comparable at t_k, over score intervals the coordinator
# chooses; pairs in different sub-intervals are decided from the summed histograms alone, and
# sub-intervals holding both are split further until each is a single score value (a tie).

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


def check_cells(cell_k: np.ndarray, bounds: np.ndarray, n_times: int) -> None:
    """Raise ValueError for cells a site should not count (malformed request)."""
    if len(cell_k) != len(bounds):
        raise ValueError(f"cells: {len(cell_k)} times for {len(bounds)} intervals")
    if len(cell_k) and (cell_k.min() < 0 or cell_k.max() >= n_times):
        raise ValueError("cells: an event-time index is outside the grid")
    if len(bounds) and (
        np.any(bounds[:, 0] >= bounds[:, 1])
        or bounds.min() < -SCORE_RANGE
        or bounds.max() > SCORE_RANGE
    ):
        raise ValueError("cells: a score interval is empty or outside the score range")


def cell_histograms(
    durations: np.ndarray,
    events: np.ndarray,
    scores: np.ndarray,
    grid: np.ndarray,
    cell_k: np.ndarray,
    bounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one sample's (deaths, comparable) counts per cell and sub-interval (cells × SPLIT).

    Cell c is event time ``grid[cell_k[c]]`` and the score interval ``bounds[c]`` split at
    ``_edges``; its deaths are the records with an event at that time, its comparable records
    those with a later time or censored at it. The counts are sums over records, so the counts of
    batches (or sites) add up to those of their union. The intervals of one round are disjoint or
    equal: cells sharing an interval are sorted by time, and a record adds one to the prefix of
    them at which it is still comparable (a difference array), O(n log cells + cells · SPLIT).
    """
    n_cells = len(cell_k)
    deaths = np.zeros((n_cells, SPLIT), dtype=np.int64)
    comparable = np.zeros((n_cells, SPLIT), dtype=np.int64)
    t = np.asarray(durations, dtype=np.float64)
    if not n_cells or not len(t):
        return deaths, comparable
    grid = np.asarray(grid, dtype=np.float64)
    cell_k = np.asarray(cell_k, dtype=np.int64)
    bounds = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((cell_k, bounds[:, 1], bounds[:, 0]))
    lo, hi, ks = bounds[order, 0], bounds[order, 1], cell_k[order]
    new = np.ones(n_cells, dtype=bool)
    new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1  # each sorted cell's interval
    stride = len(grid) + 1
    cell_key = group * stride + ks  # ascending: by interval, then by time
    g_lo, g_hi = lo[starts], hi[starts]
    s = np.asarray(scores, dtype=np.int64)
    g = np.searchsorted(g_lo, s, side="right") - 1
    inside = g >= 0
    inside[inside] = s[inside] < g_hi[g[inside]]
    rows = np.flatnonzero(inside)
    g, s, t = g[rows], s[rows], t[rows]
    observed = np.asarray(events, dtype=np.float64)[rows] == 1
    width = g_hi[g] - g_lo[g]
    sub = (SPLIT * (s - g_lo[g] + 1) - 1) // width  # the sub-interval [edge_j, edge_j+1) of s
    k = np.searchsorted(grid, t, side="left")
    at_grid = k < len(grid)
    at_grid[at_grid] = grid[k[at_grid]] == t[at_grid]
    # deaths: the cell of the record's own time, if it is asked for
    dead = observed & at_grid
    query = g[dead] * stride + k[dead]
    pos = np.searchsorted(cell_key, query)
    found = pos < n_cells
    found[found] = cell_key[pos[found]] == query[found]
    np.add.at(deaths, (order[pos[found]], sub[dead][found]), 1)
    # comparable at grid[j] for every j < k_max: earlier times, and its own time when censored
    k_max = k + (~observed & at_grid)
    first = starts[g]
    stop = np.searchsorted(cell_key, g * stride + k_max, side="left")
    size = (n_cells + 1) * SPLIT
    diff = np.bincount(first * SPLIT + sub, minlength=size) - np.bincount(
        stop * SPLIT + sub, minlength=size
    )
    comparable[order] = np.cumsum(diff.reshape(n_cells + 1, SPLIT), axis=0)[:n_cells]
    return deaths, comparable


def total_pairs(deaths: np.ndarray, comparable: np.ndarray) -> int:
    """Return the number of comparable pairs, from summed histograms (cells × SPLIT) of cells that
    cover the whole score range (the first round's)."""
    return int((np.asarray(deaths).sum(1) * np.asarray(comparable).sum(1)).sum())


def count_cells(
    cell_k: np.ndarray, bounds: np.ndarray, deaths: np.ndarray, comparable: np.ndarray
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Count the pairs that summed cell histograms decide; return the cells to refine.

    ``deaths`` and ``comparable`` are summed over sites (cells × SPLIT). Returns the concordant
    and tied pair counts decided here (a death above a comparable record's sub-interval is
    concordant; both in one sub-interval one unit wide is a tie), and the cells (time index,
    bounds) of the sub-intervals that hold both and are wider: refinement always ends.
    """
    deaths = np.asarray(deaths, dtype=np.int64)
    comparable = np.asarray(comparable, dtype=np.int64)
    below = np.cumsum(comparable, axis=1) - comparable
    concordant = int((deaths * below).sum())
    same = deaths * comparable
    edges = _edges(np.asarray(bounds, dtype=np.int64).reshape(-1, 2))
    width = edges[:, 1:] - edges[:, :-1]
    tied = int(same[(same > 0) & (width == 1)].sum())
    cells, subs = np.nonzero((same > 0) & (width > 1))
    new_bounds = np.column_stack([edges[cells, subs], edges[cells, subs + 1]]).astype(np.int64)
    return concordant, tied, np.asarray(cell_k, dtype=np.int64)[cells], new_bounds
