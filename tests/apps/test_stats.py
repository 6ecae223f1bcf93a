"""stats: parameters, histograms, exact quantiles, matrices, min_count refusals, edge cases, and
the phases' typed payloads (what crosses the wire)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge import SMALL_ABOVE, SMALL_BELOW, float_keys
from fedflow.apps.base import CoordinatorContext, SiteContext, SiteInfo, Table, encode_payload
from fedflow.apps.stats import (
    CANDIDATES_PER_ROUND,
    ColumnSummary,
    Cuts,
    Refine,
    Stats,
    Summary,
)
from fedflow.errors import AppError, DataError, RemoteProtocolError
from fedflow.runtime.simulate import simulate
from tests.apps.wire_spy import run_spied


def _sites(frame: pd.DataFrame, sizes: list[int]) -> dict[str, Table]:
    bounds = np.cumsum([0, *sizes])
    return {
        f"s{i}": Table.from_pandas(frame.iloc[a:b].reset_index(drop=True))
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    }


def _frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(50.0, 10.0, n),
            "y": rng.integers(0, 20, n),
            "z": rng.exponential(3.0, n) - 1.0,
        }
    )


def _run(frame: pd.DataFrame, params: dict[str, Any], sizes: list[int], min_count: int = 5):
    return simulate("stats", params, _sites(frame, sizes), min_count=min_count)


# --- defaults stay as they were ---------------------------------------------------------------
def test_default_result_keeps_the_four_basic_statistics_in_one_round() -> None:
    frame = _frame()
    sim = _run(frame, {}, [100, 150, 50])
    assert sim.rounds == 1
    assert list(sim.result) == ["x", "y", "z"]
    for column in frame:
        assert list(sim.result[column]) == ["count", "mean", "variance", "std"]
        assert sim.result[column]["variance"] == pytest.approx(frame[column].var(ddof=1), rel=1e-12)
    assert sim.params.statistics == ["count", "mean", "variance", "std"]


def test_selected_statistics_only() -> None:
    frame = _frame()
    sim = _run(frame, {"columns": ["x"], "statistics": ["mean", "sem", "sum"]}, [100, 200])
    assert sim.result == {
        "x": {
            "mean": pytest.approx(frame.x.mean(), rel=1e-13),
            "sum": pytest.approx(frame.x.sum(), rel=1e-13),
            "sem": pytest.approx(frame.x.sem(), rel=1e-12),
        }
    }


# --- parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params,message",
    [
        ({"statistics": ["median"]}, "unknown statistic 'median'"),
        ({"statistics": ["mean", "mean"]}, "twice"),
        ({"statistics": ["min"]}, "share_extremes = true"),
        ({"bins": 10}, r"bins needs share_extremes = true \(.*\); or give bin_edges"),
        ({"bins": 10, "bin_edges": [0, 1], "share_extremes": True}, "not both"),
        ({"bins": 0, "share_extremes": True}, "at least 1"),
        ({"bin_edges": [1.0]}, "at least two edges"),
        ({"bin_edges": [0, 2, 1]}, "strictly increasing"),
        ({"bin_edges": {"x": [0, math.inf]}}, r"bin_edges.x must hold finite"),
        ({"quantiles": []}, "quantiles is empty"),
        ({"quantiles": [0.5, 1.5]}, "between 0 and 1"),
        ({"quantiles": [0.5, 0.5]}, "twice"),
        ({"quantiles": [0.5], "quantile_method": "linaer"}, "unknown method 'linaer'"),
        ({"statistics": []}, "nothing to compute"),
        ({"columns": ["x", "x"]}, "twice"),
        ({"bins_edges": [0, 1]}, "did you mean 'bin_edges'"),
    ],
)
def test_bad_params_are_refused_with_a_clear_message(params: dict[str, Any], message: str) -> None:
    with pytest.raises(AppError, match=message) as info:
        Stats.parse_params(params)
    assert "\n" not in str(info.value)


def test_resolve_refuses_unknown_edge_columns_and_matrix_name_clashes() -> None:
    app = Stats()
    with pytest.raises(AppError, match="bin_edges names column 'w'"):
        app.resolve(app.parse_params({"bin_edges": {"w": [0, 1]}}), {"x": "float"})
    with pytest.raises(AppError, match="clashes"):
        app.resolve(app.parse_params({"statistics": ["covariance"]}), {"covariance": "float"})
    with pytest.raises(AppError, match="no numeric column"):
        app.resolve(app.parse_params({}), {"name": "str"})


# --- histograms ---------------------------------------------------------------------------------
def test_histogram_over_given_edges_matches_numpy_and_ignores_values_outside() -> None:
    frame = _frame()
    edges = [20.0, 40.0, 50.0, 60.0, 80.0]
    sim = _run(frame, {"columns": ["x"], "bin_edges": edges}, [150, 150], min_count=1)
    counts, _ = np.histogram(frame.x, bins=edges)
    assert sim.result["x"]["histogram"] == {"edges": edges, "counts": counts.tolist()}
    assert sim.rounds == 1


def test_histogram_per_column_edges() -> None:
    frame = _frame()
    sim = _run(frame, {"bin_edges": {"y": [0, 5, 10, 20]}}, [150, 150])
    assert "histogram" not in sim.result["x"]
    assert (
        sim.result["y"]["histogram"]["counts"] == np.histogram(frame.y, [0, 5, 10, 20])[0].tolist()
    )


def test_bins_agree_edges_from_the_federated_range_like_numpy() -> None:
    frame = _frame()
    sim = _run(frame, {"bins": 7, "share_extremes": True}, [40, 200, 60], min_count=1)
    assert sim.rounds == 2
    for column in frame:
        counts, edges = np.histogram(frame[column], bins=7)
        assert sim.result[column]["histogram"]["counts"] == counts.tolist()
        assert sim.result[column]["histogram"]["edges"] == edges.tolist()


def test_a_bin_with_fewer_than_min_count_records_makes_the_site_refuse() -> None:
    frame = pd.DataFrame({"x": [1.0] * 10 + [2.0] * 3 + [3.0] * 10})
    with pytest.raises(DataError, match=r"histogram bin \[1.5, 2.5\) covers 3 records") as info:
        _run(frame, {"bin_edges": [1, 1.5, 2.5, 3]}, [23], min_count=5)
    assert info.value.site == "s0"
    with pytest.raises(DataError, match="below the first edge covers 1 records"):
        _run(frame.assign(x=frame.x.where(frame.index != 0, -5.0)), {"bin_edges": [0, 10]}, [23])
    # empty bins reveal nothing and are fine
    sim = _run(frame, {"bin_edges": [0, 1, 1.5, 2.5, 9]}, [23], min_count=3)
    assert sim.result["x"]["histogram"]["counts"] == [0, 10, 3, 10]


# --- quantiles ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method", ["linear", "lower", "higher", "nearest", "inverted_cdf", "hazen"]
)
def test_quantiles_are_exact_for_every_method(method: str) -> None:
    frame = _frame(500, seed=3)
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    sim = _run(frame, {"quantiles": qs, "quantile_method": method}, [100, 300, 100])
    for column in frame:
        expected = np.quantile(frame[column].to_numpy(dtype=float), qs, method=method)
        got = [sim.result[column]["quantiles"][repr(q)] for q in qs]
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
        if method in ("lower", "higher", "nearest", "inverted_cdf"):
            assert got == expected.tolist()  # an order statistic, bit for bit
    # 2⁶⁴ keys, 256-fold narrowing per round: at most 8 bisection rounds, the first of them
    # travelling with the summary
    assert sim.rounds <= math.ceil(64 / math.log2(CANDIDATES_PER_ROUND + 1))


def test_quantiles_with_ties_negative_zero_and_extreme_magnitudes() -> None:
    values = np.array([-0.0, 0.0, 0.0, 1e-300, -1e300, 5.0, 5.0, 5.0, 5.0, 1e300, -2.5, 7.0] * 3)
    frame = pd.DataFrame({"v": values})
    qs = [0.2, 0.5, 0.6, 0.8]
    sim = _run(frame, {"quantiles": qs, "quantile_method": "lower"}, [12, 12, 12], min_count=1)
    assert [sim.result["v"]["quantiles"][repr(q)] for q in qs] == np.quantile(
        values, qs, method="lower"
    ).tolist()


def test_quantiles_between_neighbouring_floats_bisect_to_the_last_key() -> None:
    """Min and max one float apart: the interval starts at two keys, and the last bisection
    step must still tell them apart (stopping one step early would answer the lower one)."""
    low, high = 1.0, float(np.nextafter(1.0, 2.0))
    frame = pd.DataFrame({"v": [low] * 10 + [high] * 10})
    qs = [0.25, 0.75, 1.0]
    params = {"quantiles": qs, "quantile_method": "lower", "share_extremes": True}
    sim = _run(frame, params, [10, 10], min_count=1)
    assert sim.result["v"]["quantiles"] == {"0.25": low, "0.75": high, "1.0": high}


def test_extreme_quantiles_need_share_extremes() -> None:
    frame = _frame(200)
    with pytest.raises(AppError, match="quantile 0.0 of column 'x'.*share_extremes = true"):
        _run(frame, {"columns": ["x"], "quantiles": [0.0]}, [100, 100])
    sim = _run(
        frame,
        {
            "columns": ["x"],
            "quantiles": [0.0, 1.0],
            "share_extremes": True,
            "statistics": ["min", "max"],
        },
        [100, 100],
    )
    assert sim.result["x"]["quantiles"] == {"0.0": frame.x.min(), "1.0": frame.x.max()}
    assert sim.result["x"]["min"] == frame.x.min() and sim.result["x"]["max"] == frame.x.max()


def test_quantile_sites_send_only_counts() -> None:
    frame = _frame(120)
    app = get_app("stats")
    params = app.resolve(app.parse_params({"columns": ["x"], "quantiles": [0.5]}), {"x": "float"})
    table = Table.from_pandas(frame)
    ctx = SiteContext(site="s", min_count=5)
    summary = app.local(table, params, "summary", Cuts(), ctx)
    assert encode_payload(summary) == {
        "columns": {
            "x": {"n": 120, "mean": summary.columns["x"].mean, "m2": summary.columns["x"].m2}
        }
    }  # no min, no max, no values, no cut counts when no candidates were sent
    candidates = np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)
    reply = app.local(table, params, "refine", Refine(candidates={"x": candidates}), ctx)
    assert set(encode_payload(reply)) == {"cuts"}
    assert set(encode_payload(reply)["cuts"]["x"]) == {"at_or_below", "min_count"}
    # keys of -NaN…, +0.0, +NaN: counts 0 and 120 leave no record on one side, so are withheld
    assert reply.cuts["x"].at_or_below.tolist() == [SMALL_BELOW, SMALL_BELOW, SMALL_ABOVE]
    # a cut leaving 1..min_count-1 records on a side is withheld (coded negative)
    middle = float_keys(np.sort(frame.x.to_numpy())[59:60])
    reply = app.local(table, params, "refine", Refine(candidates={"x": middle}), ctx)
    assert reply.cuts["x"].at_or_below.tolist() == [60]
    just_above_min = np.array([float(np.sort(frame.x)[1])])
    request = Refine(candidates={"x": float_keys(just_above_min)})
    reply = app.local(table, params, "refine", request, ctx)
    assert reply.cuts["x"].at_or_below.tolist() == [SMALL_BELOW]


def test_the_wire_carries_aggregates_only_phase_by_phase() -> None:
    frame = _frame(300)
    params = {
        "quantiles": [0.5],
        "bins": 3,
        "share_extremes": True,
        "statistics": ["count", "mean", "min", "max", "covariance"],
    }
    spied = run_spied("stats", params, _sites(frame, [100, 100, 100]), min_count=1)
    phases = [e.phase for e in spied.exchanges]
    assert phases[:3] == ["summary"] * 3 and set(phases[3:]) == {"refine"}
    assert len(phases) <= 3 * math.ceil(64 / math.log2(CANDIDATES_PER_ROUND + 1))
    for reply in spied.replies("summary"):
        assert set(reply) == {"columns", "comoments", "cuts"}
        assert set(reply["columns"]) == {"x", "y", "z"}
        for column in reply["columns"].values():
            assert set(column) == {"n", "mean", "m2", "min", "max"}
        assert set(reply["comoments"]) == {"n", "mean", "c"}
        assert np.shape(reply["comoments"]["c"]) == (3, 3)
    refines = spied.replies("refine")
    assert [set(r) for r in refines[:3]] == [{"histograms", "cuts"}] * 3  # bins ride along once
    assert all(set(r) == {"cuts"} for r in refines[3:])
    for reply in [*spied.replies("summary"), *refines]:
        for cut in reply["cuts"].values():
            assert set(cut) == {"at_or_below", "min_count"}
            assert np.asarray(cut["at_or_below"]).dtype.kind == "i"  # counts, never values
            # the median of 300 records needs two order statistics: 255 candidates each
            assert np.size(cut["at_or_below"]) <= 2 * CANDIDATES_PER_ROUND


def test_a_reply_missing_an_asked_column_is_blamed_on_its_site() -> None:
    app = Stats()
    params = app.resolve(app.parse_params({}), {"x": "float", "y": "float"})
    sites = {s: SiteInfo(s, 10, {"x": "float", "y": "float"}) for s in ("a", "b")}
    ctx = CoordinatorContext(sites=sites)
    app.start(params, ctx)
    full = {c: ColumnSummary(n=10, mean=1.0, m2=2.0) for c in ("x", "y")}
    short = {"x": ColumnSummary(n=10, mean=1.0, m2=2.0)}
    replies = {"a": Summary(columns=full), "b": Summary(columns=short)}
    with pytest.raises(RemoteProtocolError, match=r"summaries of columns \['x'\]") as info:
        app.aggregate("summary", replies, params, ctx)
    assert info.value.site == "b"


# --- matrices -----------------------------------------------------------------------------------
def test_covariance_and_correlation_match_numpy() -> None:
    frame = _frame(400, seed=5)
    frame["w"] = frame.x * 2.0 + frame.z + 1e6
    sim = _run(frame, {"statistics": ["covariance", "correlation"]}, [10, 300, 90])
    names = list(frame)
    cov = np.cov(frame.to_numpy(dtype=float), rowvar=False)
    cor = np.corrcoef(frame.to_numpy(dtype=float), rowvar=False)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert sim.result["covariance"][a][b] == pytest.approx(cov[i, j], rel=1e-10)
            assert sim.result["correlation"][a][b] == pytest.approx(cor[i, j], rel=1e-10)
    assert set(sim.result) == {"covariance", "correlation"}  # no per-column statistics asked


def test_constant_column_gives_nan_correlation_like_numpy() -> None:
    frame = pd.DataFrame({"a": np.arange(20.0), "c": np.full(20, 3.0)})
    sim = _run(frame, {"statistics": ["correlation"]}, [10, 10])
    assert sim.result["correlation"]["a"]["a"] == pytest.approx(1.0)
    assert math.isnan(sim.result["correlation"]["a"]["c"])


# --- min_count ------------------------------------------------------------------------------------
def test_a_site_with_fewer_than_min_count_rows_never_answers() -> None:
    app = get_app("stats")
    params = app.resolve(app.parse_params({"quantiles": [0.5]}), {"x": "float"})
    table = Table({"x": np.arange(4.0)})
    with pytest.raises(DataError, match="covers 4 records, fewer than min_count = 5"):
        app.local(table, params, "summary", Cuts(), SiteContext(site="s", min_count=5))
    with pytest.raises(DataError, match="covers 4 records"):
        app.local(
            table,
            params,
            "refine",
            Refine(candidates={"x": np.array([1], dtype=np.uint64)}),
            SiteContext(site="s", min_count=5),
        )


def test_missing_values_are_refused() -> None:
    app = get_app("stats")
    params = app.resolve(app.parse_params({}), {"x": "float"})
    with pytest.raises(DataError, match="column 'x' has missing values"):
        app.local(
            Table({"x": np.array([1.0, np.nan] * 5)}), params, "summary", Cuts(), SiteContext("s")
        )


def test_results_are_plain_json_types() -> None:
    import json

    frame = _frame()
    sim = _run(
        frame,
        {
            "quantiles": [0.5],
            "bins": 3,
            "share_extremes": True,
            "statistics": [*("count", "mean", "min", "max", "covariance")],
        },
        [150, 150],
        min_count=1,
    )
    assert json.loads(json.dumps(sim.result, allow_nan=True)) == sim.result
