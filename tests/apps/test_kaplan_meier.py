"""kaplan-meier: event-table merging, curve and log-rank maths against lifelines, parameters,
min_count refusals and edge cases (time-0 events, survival reaching 0, median not reached)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._survival import (
    event_table,
    group_label,
    km_curve,
    logrank_test,
    median_survival,
    merge_event_tables,
)
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.kaplan_meier import EventTables, survival_table
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate


def _sample(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    durations = rng.integers(0, 12, n).astype(float)  # many ties, some at time 0
    events = (rng.random(n) < 0.7).astype(np.int64)
    return durations, events


def _sites(frame: pd.DataFrame, n_sites: int) -> dict[str, Table]:
    parts = np.array_split(np.arange(len(frame)), n_sites)
    return {
        f"s{i}": Table.from_pandas(frame.iloc[p].reset_index(drop=True))
        for i, p in enumerate(parts)
    }


def test_merged_event_tables_equal_the_pooled_table() -> None:
    durations, events = _sample(1)
    pooled = event_table(durations, events)
    parts = [event_table(durations[i::3], events[i::3]) for i in range(3)]
    merged = merge_event_tables(parts)
    for a, b in zip(pooled, merged, strict=True):
        np.testing.assert_array_equal(a, b)
    assert merged[1].sum() + merged[2].sum() == len(durations)


def test_curve_matches_lifelines_with_time_zero_events_and_survival_reaching_zero() -> None:
    from lifelines import KaplanMeierFitter

    durations, events = _sample(2)
    durations = np.append(durations, [0.0, 20.0])  # an event at time 0 and a last event
    events = np.append(events, [1, 1])
    curve = km_curve(*event_table(durations, events), 0.1)
    kmf = KaplanMeierFitter(alpha=0.1).fit(durations, events)
    np.testing.assert_array_equal(curve["time"], kmf.event_table.index.to_numpy())
    np.testing.assert_array_equal(curve["at_risk"], kmf.event_table["at_risk"].to_numpy())
    np.testing.assert_allclose(
        curve["survival"], kmf.survival_function_.to_numpy()[:, 0], rtol=1e-13
    )
    ci = kmf.confidence_interval_.to_numpy()
    np.testing.assert_allclose(curve["ci_lower"], ci[:, 0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(curve["ci_upper"], ci[:, 1], rtol=1e-12, atol=1e-15)
    assert curve["survival"][-1] == 0.0
    assert median_survival(curve["time"], curve["survival"]) == kmf.median_survival_time_


def test_timeline_starts_at_zero_with_everyone_at_risk() -> None:
    curve = km_curve(np.array([2.0, 5.0]), np.array([1, 0]), np.array([1, 2]), 0.05)
    assert curve["time"].tolist() == [0.0, 2.0, 5.0]
    assert curve["at_risk"].tolist() == [4, 4, 2]
    assert curve["survival"][0] == 1.0 and curve["ci_lower"][0] == 1.0


def test_median_is_none_when_survival_stays_above_half() -> None:
    assert median_survival(np.array([0.0, 1.0]), np.array([1.0, 0.9])) is None
    assert median_survival(np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 0.2])) == 1.0


def test_logrank_matches_lifelines_for_three_groups() -> None:
    from lifelines.statistics import multivariate_logrank_test

    durations, events = _sample(3, 150)
    groups = np.random.default_rng(30).integers(0, 3, len(durations))
    tables = [event_table(durations[groups == g], events[groups == g]) for g in range(3)]
    statistic, p_value, dof = logrank_test(tables)
    ref = multivariate_logrank_test(durations, groups, events)
    assert 0.01 < ref.p_value < 0.99  # a p-value that its degrees of freedom move
    assert statistic == pytest.approx(ref.test_statistic, rel=1e-12)
    assert p_value == pytest.approx(ref.p_value, rel=1e-10, abs=0)
    assert dof == ref.degrees_of_freedom == 2


@pytest.mark.parametrize(
    "value,label",
    [(1, "1"), (1.0, "1"), (np.int64(2), "2"), (np.float64(2.5), "2.5"), ("a", "a"), (True, "1")],
)
def test_group_labels(value: object, label: str) -> None:
    assert group_label(value) == label


def test_int_and_float_group_columns_at_different_sites_merge() -> None:
    durations, events = _sample(4, 40)
    groups = np.tile([0, 1], 20)
    a = Table({"t": durations[:20], "e": events[:20], "g": groups[:20].astype(np.int64)})
    b = Table({"t": durations[20:], "e": events[20:], "g": groups[20:].astype(np.float64)})
    sim = simulate("kaplan-meier", {"duration": "t", "event": "e", "group": "g"}, {"a": a, "b": b})
    assert sorted(sim.result["timeline"]) == ["0", "1"]
    frame = pd.DataFrame({"t": durations, "e": events, "g": groups})
    central = get_app("kaplan-meier").centralized(frame, sim.params)
    assert sim.result["logrank"]["statistic"] == pytest.approx(central["logrank"]["statistic"])


def test_result_is_json_ready_and_matches_twin_when_median_not_reached() -> None:
    t = np.arange(80) % 20 + 1
    frame = pd.DataFrame({"t": t, "e": (t <= 3).astype(int)})  # survival ends at 0.85
    sim = simulate("kaplan-meier", {"duration": "t", "event": "e"}, _sites(frame, 3))
    json.dumps(sim.result)
    assert sim.result["median_survival"] is None
    central = get_app("kaplan-meier").centralized(frame, sim.params)
    assert central["median_survival"] is None
    assert sim.result["n_obs"] == 80 and sim.result["n_events"] == int(frame["e"].sum())
    assert sim.result["timeline"] == central["timeline"]
    # time 0 and the event times 1, 2, 3; the censor-only times 4..20 add no row
    assert sim.result["timeline"]["time"] == [0.0, 1.0, 2.0, 3.0]
    assert sim.result["timeline"]["at_risk"] == [80, 80, 76, 72]


@pytest.mark.parametrize("group", [None, "g"])
def test_timeline_lists_time_zero_and_every_event_time_of_the_pooled_rows(
    group: str | None,
) -> None:
    durations, events = _sample(7, 90)
    groups = np.random.default_rng(7).integers(0, 3, len(durations))
    frame = pd.DataFrame({"t": durations, "e": events, "g": groups})
    raw = {"duration": "t", "event": "e", **({"group": group} if group else {})}
    sim = simulate("kaplan-meier", raw, _sites(frame, 4), min_count=1)
    curves = sim.result["timeline"] if group else {"": sim.result["timeline"]}
    parts = [frame[frame["g"] == int(g)] for g in curves] if group else [frame]
    assert sum(sum(c["events"]) for c in curves.values()) == sim.result["n_events"]
    for curve, part in zip(curves.values(), parts, strict=True):
        assert set(curve) == {"time", "at_risk", "events", "survival", "ci_lower", "ci_upper"}
        dead = np.unique(part["t"][part["e"] == 1])
        assert curve["time"] == sorted({0.0, *dead.tolist()})
        assert curve["at_risk"][0] == len(part)
        assert all(len(column) == len(curve["time"]) for column in curve.values())


def test_survival_table_gives_lifelines_whole_curve_as_a_step_function() -> None:
    from lifelines import KaplanMeierFitter

    durations, events = _sample(8, 200)
    durations = durations + np.random.default_rng(8).random(200).round(1)  # censor-only times
    table = survival_table(km_curve(*event_table(durations, events), 0.05))
    kmf = KaplanMeierFitter().fit(durations, events)
    timeline = kmf.survival_function_.index.to_numpy()
    assert len(table["time"]) < len(timeline)  # censor-only times were left out
    row = np.searchsorted(table["time"], timeline, side="right") - 1  # the step in force
    ci = kmf.confidence_interval_.to_numpy()
    np.testing.assert_allclose(
        np.asarray(table["survival"])[row], kmf.survival_function_.to_numpy()[:, 0], rtol=1e-13
    )
    np.testing.assert_allclose(np.asarray(table["ci_lower"])[row], ci[:, 0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(table["ci_upper"])[row], ci[:, 1], rtol=1e-12)


def test_site_reply_holds_only_the_event_table() -> None:
    durations, events = _sample(6, 30)
    app = get_app("kaplan-meier")
    params = app.parse_params({"duration": "t", "event": "e"})
    reply = app.local(
        Table({"t": durations, "e": events}), params, "events", Empty(), SiteContext(site="a")
    )
    assert isinstance(reply, EventTables)
    assert list(reply.tables) == [""]
    table = reply.tables[""]
    assert len(table.time) == len(np.unique(durations))
    assert table.events.sum() + table.censored.sum() == 30


def test_site_refuses_small_tables_and_small_groups_but_not_absent_groups() -> None:
    app = get_app("kaplan-meier")
    params = app.parse_params({"duration": "t", "event": "e", "group": "g"})
    ctx = SiteContext(site="a", min_count=5)
    small = Table({"t": np.arange(4.0), "e": np.ones(4, dtype=np.int64), "g": np.zeros(4)})
    with pytest.raises(DataError, match="fewer than min_count"):
        app.local(small, params, "events", Empty(), ctx)
    mixed = Table(
        {"t": np.arange(8.0), "e": np.ones(8, dtype=np.int64), "g": np.array([0] * 6 + [1] * 2)}
    )
    with pytest.raises(DataError, match="group '1' of column 'g'"):
        app.local(mixed, params, "events", Empty(), ctx)
    only_one = Table({"t": np.arange(6.0), "e": np.ones(6, dtype=np.int64), "g": np.zeros(6)})
    assert list(app.local(only_one, params, "events", Empty(), ctx).tables) == ["0"]


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"duration": "t", "event": "e", "alpha": 1.5}, "alpha"),
        ({"duration": "t", "event": "t"}, "different columns"),
        ({"duration": "t", "event": "e", "grup": "g"}, "did you mean 'group'"),
        ({"event": "e"}, "duration"),
    ],
)
def test_bad_params_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match=message):
        get_app("kaplan-meier").parse_params(raw)


def test_missing_column_and_bad_durations() -> None:
    t = Table({"t": np.arange(10.0), "e": np.ones(10, dtype=np.int64)})
    with pytest.raises(AppError, match="params.group column 'g'"):
        simulate("kaplan-meier", {"duration": "t", "event": "e", "group": "g"}, {"a": t})
    negative = Table({"t": np.arange(10.0) - 1, "e": np.ones(10, dtype=np.int64)})
    with pytest.raises(DataError, match="negative durations"):
        simulate("kaplan-meier", {"duration": "t", "event": "e"}, {"a": negative})
    missing = Table({"t": np.append(np.arange(9.0), np.nan), "e": np.ones(10, dtype=np.int64)})
    with pytest.raises(DataError, match="column 't' has 1 missing value"):
        simulate("kaplan-meier", {"duration": "t", "event": "e"}, {"a": missing})


def test_a_single_group_cannot_be_tested() -> None:
    t = Table(
        {
            "t": np.arange(10.0),
            "e": np.ones(10, dtype=np.int64),
            "g": np.full(10, "x", dtype=object),
        }
    )
    with pytest.raises(AppError, match="single group"):
        simulate("kaplan-meier", {"duration": "t", "event": "e", "group": "g"}, {"a": t})
