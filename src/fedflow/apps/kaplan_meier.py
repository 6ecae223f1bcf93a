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

What a site reveals: its distinct durations and, at each, how many records had an event or were
censored (per group when grouped), so a duration held by a single record is visible to the
coordinator, with that record's event status. What ``min_count`` protects: a site refuses to answer
when it holds fewer than ``min_count`` rows, or when a group it holds has fewer than ``min_count``
rows (groups a site does not hold at all are simply absent from its answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._survival import (
    event_table,
    group_label,
    km_curve,
    logrank_test,
    median_survival,
    merge_event_tables,
)
from fedflow.apps.base import (
    App,
    ColumnKind,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Table,
    check_min_count,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["KaplanMeier", "KaplanMeierParams"]


class KaplanMeierParams(Params, frozen=True):
    """``duration`` and ``event`` (0/1) columns; optional ``group`` column; ``alpha`` of the CI."""

    duration: str
    event: str
    group: str | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie strictly between 0 and 1")
        names = [self.duration, self.event] + ([self.group] if self.group else [])
        if len(set(names)) < len(names):
            raise ValueError("duration, event and group must be three different columns")


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


class KaplanMeier(App[KaplanMeierParams]):
    """Kaplan–Meier survival curves (per group), median survival, multivariate log-rank test."""

    name = "kaplan-meier"
    reference = "lifelines KaplanMeierFitter"
    Params = KaplanMeierParams
    phases = {"events": Phase(Empty, EventTables)}
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

    # -- site -----------------------------------------------------------------------------------
    def local_events(
        self, data: Table, params: KaplanMeierParams, request: Empty, ctx: SiteContext
    ) -> EventTables:
        check_min_count(data.n_rows, ctx.min_count, "the event table")
        durations = _check_durations(data[params.duration], params.duration)
        events = np.asarray(data[params.event], dtype=np.float64)
        if params.group is None:
            groups: dict[str, np.ndarray] = {"": np.ones(len(durations), dtype=bool)}
        else:
            values, inverse = np.unique(data[params.group], return_inverse=True)
            groups = {}
            for i, value in enumerate(values):
                label = group_label(value)
                mask = inverse.reshape(-1) == i
                groups[label] = groups[label] | mask if label in groups else mask
            groups = dict(sorted(groups.items()))
        tables: dict[str, EventTable] = {}
        for label, mask in groups.items():
            if params.group is not None:
                what = f"group '{label}' of column '{params.group}'"
                check_min_count(int(mask.sum()), ctx.min_count, what)
            times, n_events, n_censored = event_table(durations[mask], events[mask])
            tables[label] = EventTable(time=times, events=n_events, censored=n_censored)
        return EventTables(tables=tables)

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
        return Done(_summarise(merged, params))

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
