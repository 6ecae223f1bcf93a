"""cox: risk-set sums and the Efron/Breslow merge, the exact concordance protocol on summed
histograms, parameters, min_count refusals and failure modes (no events, collinearity, no
convergence)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._survival import (
    SCORE_RANGE,
    SPLIT,
    _edges,
    cell_histograms,
    count_cells,
    cox_terms,
    event_table,
    initial_cells,
    linear_scores,
    risk_set_sums,
    total_pairs,
)
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.cox import Cox, RiskSetSums
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate


def _data(seed: int, n: int = 120, p: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    x[:, 0] = rng.integers(0, 3, n)  # a discrete feature: many identical scores
    durations = rng.integers(1, 25, n).astype(float)  # many tied times
    events = (rng.random(n) < 0.7).astype(np.int64)
    return durations, events, x


def _pooled_sums(durations, events, x, beta, ties):  # type: ignore[no-untyped-def]
    grid, deaths, _ = event_table(durations[events == 1], events[events == 1])
    tied = deaths > 1
    sums = risk_set_sums(durations, events, x, x @ beta, grid, tied)
    return cox_terms(deaths, tied, sums, x[events == 1].sum(0), beta, ties), (grid, deaths, tied)


def test_site_sums_add_up_to_the_pooled_sums() -> None:
    durations, events, x = _data(1)
    beta = np.array([0.3, -0.2, 0.1])
    grid, deaths, _ = event_table(durations[events == 1], events[events == 1])
    tied = deaths > 1
    pooled = risk_set_sums(durations, events, x, x @ beta, grid, tied)
    parts = [np.arange(i, len(x), 4) for i in range(4)]
    summed = [risk_set_sums(durations[p], events[p], x[p], x[p] @ beta, grid, tied) for p in parts]
    for key, value in pooled.items():
        np.testing.assert_allclose(sum(s[key] for s in summed), value, rtol=1e-12)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_gradient_and_information_are_derivatives_of_the_loglik(ties: str) -> None:
    durations, events, x = _data(2)
    beta = np.array([0.2, 0.1, -0.3])
    (loglik, gradient, information), _ = _pooled_sums(durations, events, x, beta, ties)
    h = 1e-6
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        (up, g_up, _), _ = _pooled_sums(durations, events, x, beta + e, ties)
        (down, g_down, _), _ = _pooled_sums(durations, events, x, beta - e, ties)
        assert (up - down) / (2 * h) == pytest.approx(gradient[j], rel=1e-6, abs=1e-8)
        np.testing.assert_allclose(-(g_up - g_down) / (2 * h), information[j], rtol=1e-5, atol=1e-6)


def test_efron_equals_breslow_without_ties() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 2))
    durations = rng.permutation(50).astype(float) + 1.0
    events = (rng.random(50) < 0.6).astype(np.int64)
    beta = np.array([0.4, -0.1])
    (ll_e, g_e, i_e), _ = _pooled_sums(durations, events, x, beta, "efron")
    (ll_b, g_b, i_b), _ = _pooled_sums(durations, events, x, beta, "breslow")
    assert ll_e == pytest.approx(ll_b, rel=1e-14)
    np.testing.assert_allclose(g_e, g_b, rtol=1e-12)
    np.testing.assert_allclose(i_e, i_b, rtol=1e-12)


def _concordance(sites: list[tuple[np.ndarray, ...]], grid: np.ndarray) -> tuple[float, int]:
    """Run the concordance rounds by hand on the sites' summed histograms; return (C, rounds)."""
    cell_k, bounds = initial_cells(len(grid))
    counts = [0, 0, 0]
    rounds = 0
    while len(cell_k):
        rounds += 1
        replies = [cell_histograms(*site, grid, cell_k, bounds) for site in sites]
        deaths = sum(r[0] for r in replies)
        comparable = sum(r[1] for r in replies)
        if rounds == 1:
            counts[2] = total_pairs(deaths, comparable)
        concordant, tied, cell_k, bounds = count_cells(cell_k, bounds, deaths, comparable)
        counts[0] += concordant
        counts[1] += tied
    return (counts[0] + 0.5 * counts[1]) / counts[2], rounds


@pytest.mark.parametrize("n_sites", [1, 2, 5])
def test_concordance_from_summed_histograms_matches_lifelines(n_sites: int) -> None:
    from lifelines.utils import concordance_index

    durations, events, x = _data(5, n=200)
    scores = linear_scores(x, np.array([0.7, -0.4, 0.25]))
    grid = np.unique(durations[events == 1])
    rng = np.random.default_rng(n_sites)
    site_of = rng.integers(0, n_sites, len(durations))
    sites = [
        (durations[site_of == s], events[site_of == s], scores[site_of == s])
        for s in range(n_sites)
    ]
    c, rounds = _concordance(sites, grid)
    assert c == pytest.approx(concordance_index(durations, -scores, events), rel=1e-14)
    assert rounds <= 1 + int(np.ceil(np.log2(2 * SCORE_RANGE) / 6))


def test_equal_scores_are_resolved_as_ties() -> None:
    from lifelines.utils import concordance_index

    # only the discrete feature: many equal scores, found after refining to width-1 cells
    durations, events, x = _data(4)
    scores = linear_scores(x, np.array([0.5, 0.0, 0.0]))
    grid = np.unique(durations[events == 1])
    c, _ = _concordance([(durations, events, scores)], grid)
    assert c == pytest.approx(concordance_index(durations, -scores, events), rel=1e-14)
    durations = np.array([1.0, 2.0, 3.0, 4.0, 1.5, 2.5, 3.5, 4.5])
    ones = np.ones(8, dtype=np.int64)
    c, _ = _concordance([(durations, ones, np.zeros(8, dtype=np.int64))], durations)
    assert c == 0.5


def _brute_histograms(durations, events, scores, grid, cell_k, bounds):  # type: ignore[no-untyped-def]
    """Count every (cell, record) by the definition: deaths at the cell's time, records later or
    censored at it, in the sub-interval holding the score."""
    edges = _edges(bounds)
    deaths = np.zeros((len(cell_k), SPLIT), dtype=np.int64)
    comparable = np.zeros_like(deaths)
    for c, (k, (lo, hi)) in enumerate(zip(cell_k, bounds, strict=True)):
        for t, e, s in zip(durations, events, scores, strict=True):
            if lo <= s < hi:
                j = np.searchsorted(edges[c], s, side="right") - 1
                deaths[c, j] += e == 1 and t == grid[k]
                comparable[c, j] += t > grid[k] or (t == grid[k] and e == 0)
    return deaths, comparable


def test_cell_histograms_count_by_the_definition_and_add_up_over_batches() -> None:
    durations, events, x = _data(14, n=150)
    scores = linear_scores(x, np.array([0.7, -0.4, 0.25]))
    grid = np.unique(durations[events == 1])
    cell_k, bounds = initial_cells(len(grid))
    for _ in range(4):  # the first rounds, then narrower cells of several widths and times
        got = cell_histograms(durations, events, scores, grid, cell_k, bounds)
        expected = _brute_histograms(durations, events, scores, grid, cell_k, bounds)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        parts = [
            cell_histograms(durations[i::7], events[i::7], scores[i::7], grid, cell_k, bounds)
            for i in range(7)
        ]
        np.testing.assert_array_equal(sum(p[0] for p in parts), got[0])
        np.testing.assert_array_equal(sum(p[1] for p in parts), got[1])
        _, _, cell_k, bounds = count_cells(cell_k, bounds, *got)
        if not len(cell_k):
            break


def _frame(seed: int, n: int = 150) -> pd.DataFrame:
    durations, events, x = _data(seed, n)
    return pd.DataFrame({"t": durations, "e": events, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})


def _sites(frame: pd.DataFrame, n_sites: int) -> dict[str, Table]:
    parts = np.array_split(np.arange(len(frame)), n_sites)
    return {
        f"s{i}": Table.from_pandas(frame.iloc[p].reset_index(drop=True))
        for i, p in enumerate(parts)
    }


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_simulated_fit_matches_twin_and_is_json_ready(ties: str) -> None:
    frame = _frame(6)
    app = get_app("cox")
    sim = simulate(app, {"duration": "t", "event": "e", "ties": ties}, _sites(frame, 3))
    json.dumps(sim.result)
    assert sim.params.features == ["a", "b", "c"]  # default: every other numeric column
    assert sim.result["converged"] and sim.result["iterations"] < 10
    central = app.centralized(frame, sim.params)
    for key in ("coefficients", "std_errors", "p_values", "ci_lower"):
        for name in ("a", "b", "c"):
            assert sim.result[key][name] == pytest.approx(central[key][name], rel=1e-8)
    assert sim.result["loglik"] == pytest.approx(central["loglik"], rel=1e-10)
    assert sim.result["concordance"] == pytest.approx(central["concordance"], rel=1e-12)
    assert sim.result["hazard_ratios"]["a"] == pytest.approx(
        np.exp(sim.result["coefficients"]["a"])
    )


def test_no_convergence_is_reported_not_hidden() -> None:
    frame = _frame(7)
    sim = simulate("cox", {"duration": "t", "event": "e", "max_iter": 1}, _sites(frame, 2))
    assert sim.result["converged"] is False
    assert any("did not converge" in n for n in sim.notes)


def test_site_refuses_fewer_rows_than_min_count() -> None:
    app = get_app("cox")
    params = app.parse_params({"duration": "t", "event": "e", "features": ["a"]})
    table = Table({"t": np.arange(3.0), "e": np.ones(3, dtype=np.int64), "a": np.zeros(3)})
    with pytest.raises(DataError, match="fewer than min_count = 5"):
        app.local(table, params, "setup", Empty(), SiteContext(site="x", min_count=5))


def test_missing_feature_values_are_refused_by_name() -> None:
    frame = _frame(8)
    frame.loc[3, "b"] = np.nan
    with pytest.raises(DataError, match="column 'b'"):
        simulate("cox", {"duration": "t", "event": "e"}, _sites(frame, 2))


def test_no_events_and_collinear_features_fail_clearly() -> None:
    frame = _frame(9)
    with pytest.raises(AppError, match="no event"):
        simulate("cox", {"duration": "t", "event": "e"}, _sites(frame.assign(e=0), 2))
    with pytest.raises(AppError, match="singular"):
        simulate("cox", {"duration": "t", "event": "e"}, _sites(frame.assign(c=2 * frame["a"]), 2))


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"duration": "t", "event": "e", "ties": "exact"}, "ties"),
        ({"duration": "t", "event": "e", "features": ["t", "a"]}, "also listed in features"),
        ({"duration": "t", "event": "e", "features": []}, "features is empty"),
        ({"duration": "t", "event": "e", "features": ["a", "a"]}, "listed twice"),
        ({"duration": "t", "event": "e", "tol": 0}, "tol"),
        ({"duration": "t", "event": "e", "max_iter": 0}, "max_iter"),
        ({"duration": "t", "event": "e", "alpha": 0}, "alpha"),
        ({"duration": "t", "event": "e", "feature": ["a"]}, "did you mean 'features'"),
    ],
)
def test_bad_params_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match=message):
        get_app("cox").parse_params(raw)


def test_unknown_duration_column_is_named() -> None:
    with pytest.raises(AppError, match="params.duration column 'time'"):
        simulate("cox", {"duration": "time", "event": "e"}, _sites(_frame(10), 2))


def test_constant_feature_is_named() -> None:
    frame = _frame(11).assign(b=3.7)
    with pytest.raises(AppError, match="feature 'b' is constant"):
        simulate("cox", {"duration": "t", "event": "e"}, _sites(frame, 3))


def test_nearly_collinear_but_distinct_features_still_fit() -> None:
    frame = _frame(12)
    frame["c"] = frame["a"] + 1e-3 * np.random.default_rng(0).normal(size=len(frame))
    sim = simulate("cox", {"duration": "t", "event": "e"}, _sites(frame, 2))
    assert sim.result["converged"]


class _RecordingCox(Cox):
    """The cox app, recording how often the coordinator halved a Newton step and how many
    tied-event sums the sites' fit replies carried (as decoded from the wire)."""

    def __init__(self) -> None:
        self.halvings: list[int] = []
        self.tied_sums: list[int] = []

    def aggregate_fit(self, replies, params, ctx):  # type: ignore[no-untyped-def]
        self.tied_sums += [len(r.e0) for r in replies.values()]
        step = super().aggregate_fit(replies, params, ctx)
        self.halvings.append(ctx.state["cox"].halvings)
        return step


def test_overshooting_newton_steps_are_halved_and_still_match_lifelines() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(1, 25, dtype=float)
    x = -t + rng.normal(scale=rng.choice([1, 3, 6]), size=24)
    x[rng.integers(0, 24)] += rng.choice([30, -30, 60])
    frame = pd.DataFrame({"t": t, "e": np.ones(24, dtype=np.int64), "a": x})
    app = _RecordingCox()
    sites = {
        "s": Table.from_pandas(frame[::2].reset_index(drop=True)),
        "u": Table.from_pandas(frame[1::2].reset_index(drop=True)),
    }
    sim = simulate(app, {"duration": "t", "event": "e"}, sites)
    assert max(app.halvings) >= 1
    assert sim.result["converged"]
    central = app.centralized(frame, sim.params)
    assert sim.result["coefficients"]["a"] == pytest.approx(central["coefficients"]["a"], rel=1e-10)
    assert sim.result["std_errors"]["a"] == pytest.approx(central["std_errors"]["a"], rel=1e-10)


@pytest.mark.parametrize("ties,sent", [("efron", True), ("breslow", False)])
def test_tied_event_sums_travel_only_for_efron(ties: str, sent: bool) -> None:
    app = _RecordingCox()
    simulate(app, {"duration": "t", "event": "e", "ties": ties}, _sites(_frame(13), 3))
    assert app.tied_sums and (max(app.tied_sums) > 0) == sent


def test_site_replies_are_the_declared_payloads() -> None:
    from fedflow.apps.cox import Evaluate, Setup

    durations, events, x = _data(15, n=40, p=2)
    table = Table({"t": durations, "e": events, "a": x[:, 0], "b": x[:, 1]})
    app = get_app("cox")
    params = app.parse_params({"duration": "t", "event": "e", "features": ["a", "b"]})
    ctx = SiteContext(site="x")
    setup = app.local(table, params, "setup", Empty(), ctx)
    assert isinstance(setup, Setup) and setup.n == 40 and setup.n_events == int(events.sum())
    tied = setup.event_counts > 1
    request = Evaluate(beta=np.zeros(2), mean=x.mean(0), grid=setup.event_times, tied=tied)
    sums = app.local(table, params, "fit", request, ctx)
    assert isinstance(sums, RiskSetSums)
    assert sums.s2.shape == (len(setup.event_times), 2, 2) and len(sums.e0) == tied.sum()
    assert sums.s0[0] == 40  # everyone is at risk at the first event time; exp(0) = 1


def test_comparison_selects_every_compared_key_and_fails_without_one() -> None:
    frame = _frame(16)
    app = get_app("cox")
    sim = simulate(app, {"duration": "t", "event": "e"}, _sites(frame, 2))
    compared = app.comparable(sim.result)
    assert {"concordance", "loglik", "coefficients", "n_events"} <= set(compared)
    assert "iterations" not in compared and "converged" not in compared  # run details
    for key in compared:
        with pytest.raises(KeyError):
            app.comparable({k: v for k, v in sim.result.items() if k != key})


@pytest.mark.parametrize(
    "ties,twin", [("efron", "lifelines CoxPHFitter"), ("breslow", "statsmodels PHReg")]
)
def test_reference_names_the_twin_of_the_tie_method(ties: str, twin: str) -> None:
    app = get_app("cox")
    params = app.parse_params({"duration": "t", "event": "e", "ties": ties})
    assert app.reference_for(params) == twin
    library = "lifelines" if ties == "efron" else "statsmodels"
    assert library in app.reference


def test_efron_and_breslow_fits_differ_on_tied_times_and_each_matches_its_twin() -> None:
    frame = _frame(17)  # many tied event times
    app = get_app("cox")
    fits = {}
    for ties in ("efron", "breslow"):
        sim = simulate(app, {"duration": "t", "event": "e", "ties": ties}, _sites(frame, 3))
        central = app.centralized(frame, sim.params)
        assert sim.result["loglik"] == pytest.approx(central["loglik"], rel=1e-10)
        fits[ties] = sim.result
    assert fits["efron"]["loglik"] != pytest.approx(fits["breslow"]["loglik"], rel=1e-3)
    assert fits["efron"]["ties"] == "efron" and fits["breslow"]["ties"] == "breslow"
