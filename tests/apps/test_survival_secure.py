"""kaplan-meier and cox under ``secure = true``, at the app level: the conversation is driven with
the reference semantics of secure aggregation (``sum_replies``: the coordinator receives only the
field-by-field sum), and the result must equal the plaintext run and the lifelines/statsmodels
twin on 1, 3 and 7 sites. The coordinator's view must not depend on which site holds which row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._survival import TimeCounts
from fedflow.apps.base import (
    SUM,
    App,
    Continue,
    CoordinatorContext,
    SiteContext,
    SiteInfo,
    Table,
    decode_payload,
    encode_payload,
    merged_columns,
    sum_replies,
)
from fedflow.errors import AppError, DataError
from fedflow.results.compare import compare_results
from fedflow.results.pool import app_tolerances


def _kind(column: np.ndarray) -> str:
    return {"i": "int", "u": "int", "b": "int", "f": "float"}.get(column.dtype.kind, "str")


def drive(
    app: App[Any],
    raw: Mapping[str, Any],
    sites: Mapping[str, Table],
    *,
    secure: bool,
    min_count: int = 1,
    transcript: list[tuple[str, dict[str, Any], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run ``app`` over ``sites`` as the driver does, payloads through the wire encoding; under
    ``secure`` every phase must be summed and its aggregate gets only ``{SUM: sum_replies(…)}``.
    ``transcript`` collects, per round, the phase, the request and what the coordinator received
    (the summed reply)."""
    infos = {}
    for name, table in sites.items():
        first = next(table.batches(None, 1))  # the column kinds, from the first row
        infos[name] = SiteInfo(name, table.n_rows, {c: _kind(first[c]) for c in first.columns})
    params = app.resolve(app.parse_params(dict(raw)), merged_columns(infos))
    ctx = CoordinatorContext(sites=infos, min_count=min_count, secure=secure)
    site_ctx = {n: SiteContext(site=n, min_count=min_count, secure=secure) for n in sites}
    step = app.start(params, ctx)
    while isinstance(step, Continue):
        phase = app.check_phase(step.phase)
        assert phase.summed or not secure, f"phase {step.phase} is not summed"
        replies = {}
        for name, table in sites.items():
            request = (step.per_site or {}).get(name, step.request)
            request = decode_payload(encode_payload(request), phase.request)
            reply = app.local(table, params, step.phase, request, site_ctx[name])
            replies[name] = decode_payload(encode_payload(reply), phase.reply)
        if secure:
            replies = {SUM: sum_replies(replies, phase.reply)}
            if transcript is not None:
                sent = encode_payload(step.request)
                transcript.append((step.phase, sent, encode_payload(replies[SUM])))
        ctx.round += 1
        step = app.aggregate(step.phase, replies, params, ctx)
    return step.result


def split(frame: pd.DataFrame, n_sites: int, seed: int = 0) -> dict[str, Table]:
    """Split rows at random into ``n_sites`` sites of unequal sizes."""
    site_of = np.random.default_rng(seed).integers(0, n_sites, len(frame))
    site_of[:n_sites] = np.arange(n_sites)  # no empty site
    return {
        f"s{i}": Table.from_pandas(frame[site_of == i].reset_index(drop=True))
        for i in range(n_sites)
    }


def assert_matches(app: App[Any], result: dict[str, Any], reference: dict[str, Any]) -> None:
    comparison = compare_results(
        app.comparable(result), app.comparable(reference), tolerances=app_tolerances(app)
    )
    bad = [i for i in comparison.items if not i.match]
    assert comparison.status == "match", bad[:5]


def survival_frame(seed: int, n: int = 160) -> pd.DataFrame:
    """Durations with ties, events at time 0, censor-only times and fractional times; a group
    column of three arms and three features (one discrete: tied scores)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 30, n).astype(float)
    t[: n // 4] += rng.random(n // 4).round(2)  # some fractional, mostly distinct times
    e = (rng.random(n) < 0.65).astype(np.int64)
    e[t == 0] = 1
    return pd.DataFrame(
        {
            "t": t,
            "e": e,
            "arm": rng.choice(["a", "b", "c"], n),
            "x1": rng.integers(0, 3, n).astype(float),
            "x2": rng.normal(size=n),
            "x3": 0.02 * t + rng.normal(size=n),
        }
    )


# -- the time grid --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "times",
    [
        np.arange(1.0, 50.0),  # whole numbers: long runs of equal low key bits
        np.array([0.0, -0.0, 0.0, 3.5, 3.5, np.inf, -2.25, -1e-300, 5e-324, 1e300]),
        np.random.default_rng(1).exponential(100.0, 3000),  # continuous, all distinct
        np.round(np.random.default_rng(2).exponential(100.0, 3000), 1),  # many ties
        np.array([7.0] * 5),
    ],
    ids=["integers", "awkward", "continuous", "rounded", "one-time"],
)
def test_time_search_finds_every_distinct_time_and_its_count_per_group(times: np.ndarray) -> None:
    from fedflow.apps._survival import TimeSearch, count_time_cells, time_keys

    groups = np.arange(len(times)) % 2
    parts = [np.arange(len(times)) % 3 == i for i in range(3)]  # three sites
    search = TimeSearch(2)
    done = False
    while not done:
        replies = [
            count_time_cells(
                time_keys(times[p]), groups[p], 2, search.shift, search.bits, search.prefixes
            )
            for p in parts
        ]
        done = search.add(
            TimeCounts(counts=sum(r[0] for r in replies), bits_set=sum(r[1] for r in replies))
        )
        assert search.rounds <= 12
    found, counts = search.times()
    for g in range(2):
        expected, n = np.unique(times[groups == g] + 0.0, return_counts=True)
        kept = counts[g] > 0
        np.testing.assert_array_equal(found[kept], expected)
        np.testing.assert_array_equal(counts[g][kept], n)
    np.testing.assert_array_equal(found, np.unique(times + 0.0))


# -- kaplan-meier ---------------------------------------------------------------------------------
KM_CASES = [
    {"duration": "t", "event": "e"},
    {"duration": "t", "event": "e", "group": "arm", "groups": ["a", "b", "c"]},
]


@pytest.mark.parametrize("n_sites", [1, 3, 7])
@pytest.mark.parametrize("raw", KM_CASES, ids=["pooled", "grouped"])
def test_secure_kaplan_meier_equals_plaintext_and_lifelines(
    n_sites: int, raw: dict[str, Any]
) -> None:
    app = get_app("kaplan-meier")
    frame = survival_frame(n_sites)
    sites = split(frame, n_sites)
    secure = drive(app, raw, sites, secure=True)
    plain = drive(app, raw, sites, secure=False)
    timelines = (
        (secure["timeline"], plain["timeline"])
        if "group" not in raw
        else (secure["timeline"]["b"], plain["timeline"]["b"])
    )
    assert timelines[0] == timelines[1]  # the same counts give the same curve, digit for digit
    assert secure["n_obs"] == plain["n_obs"] == len(frame)
    assert_matches(app, secure, plain)
    assert_matches(app, secure, app.centralized(frame, app.parse_params(raw)))


def test_secure_kaplan_meier_with_no_event_and_only_time_zero_events() -> None:
    app = get_app("kaplan-meier")
    raw = {"duration": "t", "event": "e"}
    for t, e in (([3.0, 5.0, 5.0, 9.0], [0, 0, 0, 0]), ([0.0, 0.0, 4.0, 7.0], [1, 1, 0, 0])):
        frame = pd.DataFrame({"t": t * 3, "e": e * 3})
        sites = split(frame, 3)
        secure = drive(app, raw, sites, secure=True)
        assert secure == drive(app, raw, sites, secure=False)
        assert_matches(app, secure, app.centralized(frame, app.parse_params(raw)))


def test_coordinator_view_of_kaplan_meier_depends_only_on_the_pooled_rows() -> None:
    """Moving rows between sites changes no message the coordinator receives: it cannot learn
    which site had which time."""
    app = get_app("kaplan-meier")
    frame = survival_frame(11)
    raw = KM_CASES[1]
    seen = []
    for n_sites, seed in ((3, 1), (3, 2), (5, 3)):
        transcript: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        drive(app, raw, split(frame, n_sites, seed), secure=True, transcript=transcript)
        seen.append(transcript)
    assert [phase for phase, _, _ in seen[0]][-1] == "censored"
    for other in seen[1:]:
        assert len(other) == len(seen[0])
        for (phase_a, _, a), (phase_b, _, b) in zip(seen[0], other, strict=True):
            assert phase_a == phase_b
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    # the grid the sites count censorings on: the event times of the pooled rows
    grid = seen[0][-1][1]["grid"]
    np.testing.assert_array_equal(grid, np.unique(frame["t"][frame["e"] == 1]))


def test_secure_grouped_kaplan_meier_needs_the_labels_and_checks_them() -> None:
    app = get_app("kaplan-meier")
    frame = survival_frame(12)
    sites = split(frame, 3)
    with pytest.raises(AppError, match="params.groups"):
        drive(app, {"duration": "t", "event": "e", "group": "arm"}, sites, secure=True)
    raw = {"duration": "t", "event": "e", "group": "arm", "groups": ["a", "b"]}
    with pytest.raises(DataError, match="group 'c', which params.groups does not list"):
        drive(app, raw, sites, secure=True)
    raw = {"duration": "t", "event": "e", "group": "arm", "groups": ["a", "b", "c", "d"]}
    with pytest.raises(AppError, match="group 'd' listed in params.groups has no rows"):
        drive(app, raw, sites, secure=True)
    with pytest.raises(AppError, match="group 'd' listed in params.groups has no rows"):
        drive(app, raw, sites, secure=False)
    with pytest.raises(AppError, match="set group too"):
        app.parse_params({"duration": "t", "event": "e", "groups": ["a", "b"]})


def test_numeric_group_labels_are_listed_as_numbers_or_text() -> None:
    app = get_app("kaplan-meier")
    frame = survival_frame(13).assign(arm=lambda f: (f["arm"] == "a").astype(np.int64))
    sites = split(frame, 3)
    plain = drive(app, {"duration": "t", "event": "e", "group": "arm"}, sites, secure=False)
    for groups in ([0, 1], ["0", "1"], [1.0, 0.0]):
        raw = {"duration": "t", "event": "e", "group": "arm", "groups": groups}
        assert_matches(app, drive(app, raw, sites, secure=True), plain)


def test_sites_refuse_small_groups_under_secure_aggregation() -> None:
    app = get_app("kaplan-meier")
    frame = pd.DataFrame(
        {"t": np.arange(12.0), "e": np.ones(12, dtype=np.int64), "g": ["x"] * 9 + ["y"] * 3}
    )
    raw = {"duration": "t", "event": "e", "group": "g", "groups": ["x", "y"]}
    with pytest.raises(DataError, match="group 'y' of column 'g'"):
        drive(app, raw, {"a": Table.from_pandas(frame)}, secure=True, min_count=5)
    with pytest.raises(DataError, match="fewer than min_count"):
        drive(app, raw, {"a": Table.from_pandas(frame[:4])}, secure=True, min_count=5)


# -- cox ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_sites", [1, 3, 7])
@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_secure_cox_equals_plaintext_and_its_twin(n_sites: int, ties: str) -> None:
    app = get_app("cox")
    frame = survival_frame(20 + n_sites).drop(columns="arm")
    raw = {"duration": "t", "event": "e", "features": ["x1", "x2", "x3"], "ties": ties}
    sites = split(frame, n_sites)
    secure = drive(app, raw, sites, secure=True)
    plain = drive(app, raw, sites, secure=False)
    assert secure["converged"] and secure["iterations"] == plain["iterations"]
    assert secure["concordance"] == plain["concordance"]  # exact counts on both sides
    assert_matches(app, secure, plain)
    assert_matches(app, secure, app.centralized(frame, app.parse_params(raw)))


def test_secure_cox_finds_the_pooled_event_times_without_any_site_sending_its_own() -> None:
    app = get_app("cox")
    frame = survival_frame(30).drop(columns="arm")
    frame.loc[:9, "t"] = -frame.loc[:9, "t"] - 0.5  # negative times order correctly too
    raw = {"duration": "t", "event": "e"}
    views = []
    for seed in (1, 2):
        transcript: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        drive(app, raw, split(frame, 4, seed), secure=True, transcript=transcript)
        views.append(transcript)
        phases = [phase for phase, _, _ in transcript]
        assert phases[0] == "totals" and "times" in phases and "setup" not in phases
    times = [(a, b) for (p, _, a), (_, _, b) in zip(*views, strict=False) if p == "times"]
    assert times and all(p == "times" for p, _, _ in views[1][1 : 1 + len(times)])
    for a, b in times:
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # the grid and the tied times of the first Newton evaluation: the pooled event times
    first_fit = next(request for phase, request, _ in views[0] if phase == "fit")
    dead, deaths = np.unique(frame["t"][frame["e"] == 1], return_counts=True)
    np.testing.assert_array_equal(first_fit["grid"], dead)
    np.testing.assert_array_equal(first_fit["tied"], deaths > 1)


def test_secure_cox_refuses_what_plaintext_refuses() -> None:
    app = get_app("cox")
    frame = survival_frame(31).drop(columns="arm")
    with pytest.raises(AppError, match="feature 'x2' is constant"):
        drive(app, {"duration": "t", "event": "e"}, split(frame.assign(x2=1.5), 3), secure=True)
    with pytest.raises(AppError, match="no event"):
        drive(app, {"duration": "t", "event": "e"}, split(frame.assign(e=0), 3), secure=True)
    with pytest.raises(DataError, match="fewer than min_count"):
        drive(app, {"duration": "t", "event": "e"}, split(frame[:12], 3), secure=True, min_count=5)


def test_both_survival_apps_declare_secure_and_streaming() -> None:
    for name in ("kaplan-meier", "cox"):
        app = get_app(name)
        assert type(app).secure is True and type(app).streaming is True


# -- end to end through the secure aggregation protocol ------------------------------------------
@pytest.mark.parametrize(
    "name,raw",
    [
        ("kaplan-meier", KM_CASES[1]),
        ("cox", {"duration": "t", "event": "e", "features": ["x1", "x2", "x3"]}),
        ("cox", {"duration": "t", "event": "e", "features": ["x2", "x3"], "ties": "breslow"}),
    ],
    ids=["kaplan-meier", "cox-efron", "cox-breslow"],
)
def test_simulated_secure_run_equals_the_reference_sum_and_the_twin(
    name: str, raw: dict[str, Any]
) -> None:
    from fedflow.runtime.simulate import simulate

    app = get_app(name)
    frame = survival_frame(50).drop(columns=[] if name == "kaplan-meier" else ["arm"])
    sites = split(frame, 3)
    secure = simulate(name, raw, sites, secure=True)
    reference = drive(app, raw, sites, secure=True, min_count=5)
    assert secure.result == reference  # the masked protocol delivers the very same sums
    plain = simulate(name, raw, sites)
    assert_matches(app, secure.result, plain.result)
    assert_matches(app, secure.result, app.centralized(frame, secure.params))


def test_sites_refuse_malformed_counting_requests() -> None:
    from fedflow.apps._survival import TimeCells
    from fedflow.apps.cox import Cells

    frame = survival_frame(60)
    table = Table.from_pandas(frame)
    km = get_app("kaplan-meier")
    params = km.parse_params({"duration": "t", "event": "e"})
    ctx = SiteContext(site="a", secure=True)
    for shift, bits, prefixes in ((63, 30, [0]), (70, 4, [0]), (63, 4, [0, -1])):
        request = TimeCells(shift=shift, bits=bits, prefixes=np.array(prefixes, dtype=np.int64))
        with pytest.raises(AppError, match="time cells"):
            km.local(table, params, "times", request, ctx)
    cox = get_app("cox")
    params = cox.parse_params({"duration": "t", "event": "e", "features": ["x2"]})
    grid = np.unique(frame["t"][frame["e"] == 1])
    for cell_k, bounds in (([len(grid)], [[0, 64]]), ([0], [[5, 5]]), ([0], [[0, 1 << 40]])):
        request = Cells(
            beta=np.zeros(1),
            mean=np.zeros(1),
            grid=grid,
            cell_k=np.array(cell_k, dtype=np.int64),
            bounds=np.array(bounds, dtype=np.int64),
        )
        with pytest.raises(AppError, match="cells"):
            cox.local(table, params, "refine", request, ctx)
