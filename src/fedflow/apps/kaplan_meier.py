"""``kaplan-meier``: exact Kaplan–Meier curves and the log-rank test from the sites' event tables.

One phase, ``events`` (``Empty`` → ``EventTables``), one round. Each site sends, per group (or for
all its rows when no ``group`` is given), its event table: every distinct duration with the number
of events and of censored records at it. The coordinator adds the tables up and computes the curve
(survival, number at risk, exponential Greenwood confidence interval), the median survival time
and, for two or more groups, the multivariate log-rank test, exactly as lifelines'
``KaplanMeierFitter`` and ``multivariate_logrank_test`` do on the pooled rows.

The result's ``timeline`` is the survival table at time 0 and at every event time, one list per
column: survival and its interval change only at event times, so it is the whole curve, and the
twin's table is lifelines' timeline at the same times. (lifelines' timeline also has a row at
every censor-only time, repeating the row before it but for ``at_risk``; listing those and one
dict per row made result.json grow to megabytes on tens of thousands of rows.)

With ``secure = true`` (only sums leave a site) two summed phases replace ``events``:

1. ``times`` (``TimeCells`` → ``TimeCounts``, a few rounds) finds each group's event times without
   any site sending its own: the coordinator names cells of an order-preserving 64-bit key of the
   times; every site counts its events per group, cell and next bits of the key, and per cell how
   many have each lower key bit set; from the sums the coordinator reads off the cells holding a
   single time and splits the others (``_survival.TimeSearch``). It ends with the event times of
   all groups and each group's events at each.
2. ``censored`` (``CensorGrid`` → ``Censored``, one round): per group, every site counts its
   censored records before the first event time and between consecutive event times (of any
   group: the log-rank test needs each group's number at risk at every pooled event time).

So the coordinator learns the event times with each group's pooled events at them, and per group
the pooled number censored between consecutive event times — no site's own counts; the counts of
the ``times`` rounds are sums of the former. The group labels must then be listed in ``groups``
(a site cannot send its labels in the clear).

What a site reveals without secure aggregation: its distinct durations and, at each, how many
records had an event or were censored (per group when grouped), so a duration held by a single
record is visible to the coordinator, with that record's event status. What ``min_count``
protects: a site refuses to answer when it holds fewer than ``min_count`` rows, or when a group it
holds has fewer than ``min_count`` rows (groups a site does not hold at all are simply absent from
its answer, or zeros under secure aggregation).

Streaming: every phase reads the site's rows batch by batch (``Table.batches``) and keeps only
event tables or counts, whose size is bounded by the distinct times, not the rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._survival import (
    TimeCells,
    TimeCounts,
    TimeSearch,
    check_time_cells,
    count_time_cells,
    event_table,
    group_label,
    km_curve,
    logrank_test,
    median_survival,
    merge_event_tables,
    time_keys,
)
from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    check_min_count,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["KaplanMeier", "KaplanMeierParams"]


class KaplanMeierParams(Params, frozen=True):
    """``duration`` and ``event`` (0/1) columns; optional ``group`` column and the list of its
    ``groups`` (needed with ``secure = true``); ``alpha`` of the CI."""

    duration: str
    event: str
    group: str | None = None
    groups: list[str | int | float] | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie strictly between 0 and 1")
        names = [self.duration, self.event] + ([self.group] if self.group else [])
        if len(set(names)) < len(names):
            raise ValueError("duration, event and group must be three different columns")
        if self.groups is not None:
            if self.group is None:
                raise ValueError("groups lists the labels of the group column; set group too")
            labels = self.labels()
            if len(labels) < 2:
                raise ValueError("groups must list at least two labels (the log-rank test)")
            dupes = sorted({label for label in labels if labels.count(label) > 1})
            if dupes:
                raise ValueError(f"groups lists the label {dupes[0]!r} twice")

    def labels(self) -> list[str]:
        """Return the labels of ``groups`` as the result names them (``1.0`` is ``"1"``)."""
        return [group_label(v) for v in self.groups or []]


def _check_durations(durations: np.ndarray, column: str) -> np.ndarray:
    d = np.asarray(durations, dtype=np.float64)
    if np.isnan(d).any():
        raise DataError(f"column '{column}' has missing values", column=column)
    if (d < 0).any():
        raise DataError(f"column '{column}' has negative durations", column=column)
    return d


_COLUMNS = ("time", "at_risk", "events", "survival", "ci_lower", "ci_upper")
"""The columns of a survival table, in order."""


def survival_table(curve: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Return the rows of a Kaplan–Meier curve at time 0 and at every event time, one list per
    column (``time``, ``at_risk``, ``events``, ``survival``, ``ci_lower``, ``ci_upper``).

    Survival and its interval change only at event times, so these rows give the whole curve as
    a step function; a censor-only time adds a row equal to the one before it but for ``at_risk``
    (the censored records between two event times are ``at_risk[k] − events[k] − at_risk[k+1]``).
    """
    keep = np.asarray(curve["events"]) > 0
    keep[0] = True  # the start: time 0, everyone at risk
    return {
        column: [
            int(v) if column in ("at_risk", "events") else float(v)
            for v in np.asarray(curve[column])[keep]
        ]
        for column in _COLUMNS
    }


def _summarise(
    tables: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    params: KaplanMeierParams,
) -> dict[str, Any]:
    """Return the result from merged event tables (group label -> table; "" when ungrouped)."""
    if not tables:
        raise AppError("kaplan-meier: no rows to analyse")
    curves = {label: km_curve(*table, params.alpha) for label, table in tables.items()}
    medians = {label: median_survival(c["time"], c["survival"]) for label, c in curves.items()}
    n_obs = int(sum(int(t[1].sum() + t[2].sum()) for t in tables.values()))
    n_events = int(sum(int(t[1].sum()) for t in tables.values()))
    if params.group is None:
        return {
            "timeline": survival_table(curves[""]),
            "median_survival": medians[""],
            "n_obs": n_obs,
            "n_events": n_events,
        }
    if len(tables) < 2:
        raise AppError(
            f"kaplan-meier: column '{params.group}' holds a single group; the log-rank test "
            "needs at least two"
        )
    labels = sorted(tables)
    statistic, p_value, dof = logrank_test([tables[g] for g in labels])
    return {
        "timeline": {g: survival_table(curves[g]) for g in labels},
        "median_survival": {g: medians[g] for g in labels},
        "logrank": {"statistic": statistic, "p_value": p_value, "dof": dof},
        "n_obs": n_obs,
        "n_events": n_events,
    }


def _check_listed(tables: Mapping[str, Any], params: KaplanMeierParams) -> None:
    """Raise AppError for a group listed in ``groups`` that no site holds."""
    for label in params.labels():
        if label not in tables:
            raise AppError(
                f"app 'kaplan-meier': the group '{label}' listed in params.groups has no rows "
                "at any site"
            )


class EventTable(Payload, frozen=True):
    """One sample's event table: its distinct durations (ascending) and, at each, the number of
    events and of censored records."""

    time: np.ndarray
    events: np.ndarray
    censored: np.ndarray


class EventTables(Payload, frozen=True):
    """A site's event table per group label (the single label ``""`` when ungrouped); groups the
    site does not hold are absent."""

    tables: dict[str, EventTable]


class CensorGrid(Payload, frozen=True):
    """Phase ``censored``, to the sites: the event times of all groups (ascending)."""

    grid: np.ndarray


class Censored(Payload, frozen=True):
    """Phase ``censored``, a site's reply: per group, its censored records before the first event
    time and from each event time to the next (groups × (times + 1), int64); summed over sites."""

    counts: np.ndarray


@dataclass
class _Grid:
    """The coordinator's state while it finds the event times (``ctx.state["km"]``)."""

    labels: list[str]
    search: TimeSearch
    times: np.ndarray = field(default_factory=lambda: np.empty(0))
    events: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.int64))
    """The event times of all groups, and each group's events at them (groups × times)."""


def _summed(replies: Mapping[str, Any], what: str) -> Any:
    """Return the one summed reply a summed phase's aggregate receives under ``secure = true``."""
    if set(replies) != {SUM}:
        raise AppError(f"app 'kaplan-meier': phase '{what}' expects the summed reply only")
    return replies[SUM]


class KaplanMeier(App[KaplanMeierParams]):
    """Kaplan–Meier survival curves (per group), median survival, multivariate log-rank test."""

    name = "kaplan-meier"
    reference = "lifelines KaplanMeierFitter"
    Params = KaplanMeierParams
    phases = {
        "events": Phase(Empty, EventTables),
        "times": Phase(TimeCells, TimeCounts, summed=True),
        "censored": Phase(CensorGrid, Censored, summed=True),
    }
    secure = True
    streaming = True
    tolerances = {
        "logrank.p_value": (1e-8, 0.0),  # relative only: p-values can be 1e-28
        "logrank.dof": (0.0, 0.0),
        "n_obs": (0.0, 0.0),
        "n_events": (0.0, 0.0),
    }

    def resolve(self, params: KaplanMeierParams, columns: Mapping[str, str]) -> KaplanMeierParams:
        for key in ("duration", "event", "group"):
            column = getattr(params, key)
            if column is not None and column not in columns:
                raise AppError(
                    f"app 'kaplan-meier': params.{key} column '{column}' is not in the sites' data"
                )
        return params

    def columns(self, params: KaplanMeierParams) -> dict[str, ColumnKind]:
        needed: dict[str, ColumnKind] = {params.duration: "numeric", params.event: "binary"}
        if params.group is not None:
            needed[params.group] = "any"
        return needed

    def start(self, params: KaplanMeierParams, ctx: CoordinatorContext) -> Step:
        if not ctx.secure:
            return Continue("events", Empty())
        if params.group is not None and params.groups is None:
            raise AppError(
                "app 'kaplan-meier': with secure = true and params.group, list the group labels "
                "in params.groups (a site cannot send its labels in the clear)"
            )
        labels = params.labels() if params.group is not None else [""]
        state = ctx.state["km"] = _Grid(labels=labels, search=TimeSearch(len(labels)))
        return Continue("times", state.search.request())

    # -- site -----------------------------------------------------------------------------------
    def _batches(
        self, data: Table, params: KaplanMeierParams, ctx: SiteContext
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """Yield each batch's (durations, events, group label -> row mask), checking the rows,
        and check ``min_count`` once every batch was read (a generator: the caller reads all)."""
        names = [params.duration, params.event] + ([params.group] if params.group else [])
        listed = set(params.labels()) if params.groups is not None else None
        sizes: dict[str, int] = {}
        for batch in data.batches(names):
            durations = _check_durations(batch[params.duration], params.duration)
            events = np.asarray(batch[params.event], dtype=np.float64)
            if params.group is None:
                groups = {"": np.ones(len(durations), dtype=bool)}
            else:
                values, inverse = np.unique(batch[params.group], return_inverse=True)
                groups = {}
                for i, value in enumerate(values):
                    label = group_label(value)
                    if listed is not None and label not in listed:
                        raise DataError(
                            f"column '{params.group}' holds the group '{label}', which "
                            "params.groups does not list",
                            column=params.group,
                        )
                    mask = inverse.reshape(-1) == i
                    groups[label] = groups[label] | mask if label in groups else mask
            for label, mask in groups.items():
                sizes[label] = sizes.get(label, 0) + int(mask.sum())
            yield durations, events, groups
        check_min_count(data.n_rows, ctx.min_count, "the event table")
        if params.group is not None:
            for label, size in sorted(sizes.items()):
                if size:
                    what = f"group '{label}' of column '{params.group}'"
                    check_min_count(size, ctx.min_count, what)

    def local_events(
        self, data: Table, params: KaplanMeierParams, request: Empty, ctx: SiteContext
    ) -> EventTables:
        check_min_count(data.n_rows, ctx.min_count, "the event table")
        merged: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for durations, events, groups in self._batches(data, params, ctx):
            for label, mask in groups.items():
                table = event_table(durations[mask], events[mask])
                merged[label] = (
                    merge_event_tables([merged[label], table]) if label in merged else table
                )
        tables = {
            label: EventTable(time=times, events=n_events, censored=n_censored)
            for label, (times, n_events, n_censored) in sorted(merged.items())
            if len(times)
        }
        return EventTables(tables=tables)

    def local_times(
        self, data: Table, params: KaplanMeierParams, request: TimeCells, ctx: SiteContext
    ) -> TimeCounts:
        labels = params.labels() if params.group is not None else [""]
        prefixes = np.asarray(request.prefixes, dtype=np.int64)
        try:
            check_time_cells(request.shift, request.bits, prefixes, len(labels))
        except ValueError as exc:
            raise AppError(f"app 'kaplan-meier': {exc}") from None
        index = {label: g for g, label in enumerate(labels)}
        counts = np.zeros((len(labels), len(prefixes), 1 << request.bits), dtype=np.int64)
        bits_set = np.zeros((len(prefixes), request.shift), dtype=np.int64)
        for durations, events, groups in self._batches(data, params, ctx):
            group = np.zeros(len(durations), dtype=np.int64)
            for label, mask in groups.items():
                group[mask] = index[label]
            dead = events == 1
            c, b = count_time_cells(
                time_keys(durations[dead]),
                group[dead],
                len(labels),
                request.shift,
                request.bits,
                prefixes,
            )
            counts += c
            bits_set += b
        return TimeCounts(counts=counts, bits_set=bits_set)

    def local_censored(
        self, data: Table, params: KaplanMeierParams, request: CensorGrid, ctx: SiteContext
    ) -> Censored:
        labels = params.labels() if params.group is not None else [""]
        grid = np.asarray(request.grid, dtype=np.float64)
        if np.any(np.diff(grid) <= 0):
            raise AppError("app 'kaplan-meier': the censoring grid is not increasing")
        index = {label: g for g, label in enumerate(labels)}
        size = len(grid) + 1
        counts = np.zeros(len(labels) * size, dtype=np.int64)
        for durations, events, groups in self._batches(data, params, ctx):
            for label, mask in groups.items():
                censored = durations[mask & (events == 0)]
                # bin 0: before the first event time; bin k + 1: from event time k to the next
                bins = np.searchsorted(grid, censored, side="right") + index[label] * size
                counts += np.bincount(bins, minlength=len(counts))
        return Censored(counts=counts.reshape(len(labels), size))

    # -- coordinator ----------------------------------------------------------------------------
    def aggregate_events(
        self, replies: Mapping[str, EventTables], params: KaplanMeierParams, ctx: CoordinatorContext
    ) -> Done:
        collected: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for reply in replies.values():
            for label, table in reply.tables.items():
                collected.setdefault(label, []).append(
                    (
                        np.asarray(table.time, dtype=np.float64),
                        np.asarray(table.events, dtype=np.int64),
                        np.asarray(table.censored, dtype=np.int64),
                    )
                )
        merged = {label: merge_event_tables(parts) for label, parts in collected.items()}
        _check_listed(merged, params)
        return Done(_summarise(merged, params))

    def aggregate_times(
        self, replies: Mapping[str, TimeCounts], params: KaplanMeierParams, ctx: CoordinatorContext
    ) -> Step:
        state: _Grid = ctx.state["km"]
        if not state.search.add(_summed(replies, "times")):
            return Continue("times", state.search.request())
        state.times, state.events = state.search.times()
        return Continue("censored", CensorGrid(grid=state.times))

    def aggregate_censored(
        self, replies: Mapping[str, Censored], params: KaplanMeierParams, ctx: CoordinatorContext
    ) -> Done:
        state: _Grid = ctx.state["km"]
        counts = np.asarray(_summed(replies, "censored").counts, dtype=np.int64)
        times = state.times
        if counts.shape != (len(state.labels), len(times) + 1):
            raise AppError("app 'kaplan-meier': the summed censoring counts do not fit the grid")
        tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for label, events, censored in zip(state.labels, state.events, counts, strict=True):
            if not events.sum() + censored.sum():
                continue  # a listed group no site holds
            if len(times) and times[0] == 0.0:  # nothing is censored before time 0
                tables[label] = (times, events, censored[1:])
            else:  # the records censored before the first event time leave at time 0
                tables[label] = (
                    np.concatenate([[0.0], times]),
                    np.concatenate([np.zeros(1, dtype=np.int64), events]),
                    censored,
                )
        _check_listed(tables, params)
        return Done(_summarise(tables, params))

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: KaplanMeierParams) -> dict[str, Any]:
        from lifelines import KaplanMeierFitter
        from lifelines.statistics import multivariate_logrank_test

        def fit(frame: pd.DataFrame) -> tuple[dict[str, list[Any]], float | None]:
            kmf = KaplanMeierFitter(alpha=params.alpha).fit(
                frame[params.duration].astype(float), frame[params.event].astype(int)
            )
            table = kmf.event_table
            # lifelines' timeline holds every distinct duration; its rows at time 0 and at the
            # event times are the survival table (its other rows repeat the row before them)
            keep = table["observed"].to_numpy() > 0
            keep[0] = True
            ci = kmf.confidence_interval_.to_numpy()[keep]
            rows: dict[str, list[Any]] = {
                "time": [float(t) for t in table.index[keep]],
                "at_risk": [int(v) for v in table["at_risk"].to_numpy()[keep]],
                "events": [int(v) for v in table["observed"].to_numpy()[keep]],
                "survival": [float(v) for v in kmf.survival_function_.to_numpy()[keep, 0]],
                "ci_lower": [float(v) for v in ci[:, 0]],
                "ci_upper": [float(v) for v in ci[:, 1]],
            }
            median = float(kmf.median_survival_time_)
            return rows, (median if np.isfinite(median) else None)

        n_obs, n_events = len(pooled), int(pooled[params.event].sum())
        if params.group is None:
            rows, median = fit(pooled)
            return {
                "timeline": rows,
                "median_survival": median,
                "n_obs": n_obs,
                "n_events": n_events,
            }
        labels = pooled[params.group].map(group_label)
        timeline: dict[str, Any] = {}
        medians: dict[str, Any] = {}
        for label in sorted(labels.unique()):
            timeline[label], medians[label] = fit(pooled[labels == label])
        test = multivariate_logrank_test(
            pooled[params.duration].astype(float), labels, pooled[params.event].astype(int)
        )
        return {
            "timeline": timeline,
            "median_survival": medians,
            "logrank": {
                "statistic": float(test.test_statistic),
                "p_value": float(test.p_value),
                "dof": int(test.degrees_of_freedom),
            },
            "n_obs": n_obs,
            "n_events": n_events,
        }
