"""stats, t-test, crosstab and mean-app under ``secure = true``: every phase they run is summed,
the coordinator receives only the field-by-field sum over sites (``sum_replies``, the reference
semantics of secure aggregation), and the results match the plaintext run and the twin (numpy,
scipy, pandas) on 1, 3 and 7 sites — moments and matrices exactly rounded from exact sums."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from fedflow.apps import get_app
from fedflow.apps.base import SUM, Table
from fedflow.errors import AppError, DataError
from tests.apps.descriptive_driver import drive

MEAN_APP = "fedflow.apps.fc_mean:FeatureCloudMean"


def _frame(n: int = 280, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(50.0, 10.0, n),
            "y": 10.0 * rng.beta(2.0, 5.0, n) - 1.0,
            "k": rng.integers(0, 30, n),
            "g": rng.choice(["ctl", "trt"], n),
            "h": rng.choice([1.0, 2.0, 3.0], n, p=[0.45, 0.35, 0.2]),
        }
    )


def _sites(frame: pd.DataFrame, count: int) -> dict[str, Table]:
    parts = np.array_split(np.arange(len(frame)), count)
    return {
        f"s{i}": Table.from_pandas(frame.iloc[p].reset_index(drop=True))
        for i, p in enumerate(parts)
    }


def _close(a: Any, b: Any, rel: float, path: str = "") -> None:
    """Assert ``b`` equals ``a``: ints, strings and structure exactly, floats within ``rel``."""
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _close(a[key], b[key], rel, f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close(u, v, rel, f"{path}[{i}]")
    elif isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert b == pytest.approx(a, rel=rel, abs=1e-12), path
    else:
        assert a == b, path


def _twin(app: str, frame: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    reference = get_app(app)
    columns = {c: ("float" if frame[c].dtype.kind in "fi" else "str") for c in frame}
    return reference.centralized(  # type: ignore[no-any-return]
        frame, reference.resolve(reference.parse_params(params), columns)
    )


STATS = {
    "columns": ["x", "y", "k"],
    "statistics": [
        "count",
        "mean",
        "variance",
        "std",
        "sum",
        "sem",
        "min",
        "max",
        "skew",
        "kurtosis",
        "covariance",
        "correlation",
    ],  # fmt: skip
    "quantiles": [0.0, 0.1, 0.5, 0.75, 1.0],
    "quantile_method": "linear",
    "share_extremes": True,
    "bin_edges": {"y": [-1.0, 1.0, 3.0, 9.0]},
}


def test_apps_declare_secure_and_only_summed_phases_run() -> None:
    for name in ("stats", "t-test", "crosstab", MEAN_APP):
        assert get_app(name).secure is True, name


@pytest.mark.parametrize("sites", [1, 3, 7])
def test_stats_secure_matches_plaintext_and_numpy_scipy(sites: int) -> None:
    frame = _frame()
    secure = drive("stats", STATS, _sites(frame, sites), secure=True)
    plain = drive("stats", STATS, _sites(frame, sites), secure=False)
    twin = _twin("stats", frame, STATS)
    _close(twin, secure.result, rel=1e-12)
    _close(plain.result, secure.result, rel=1e-12)
    for column in ("x", "y", "k"):  # order statistics and counts are identical, bit for bit
        for key in ("quantiles", "min", "max", "count"):
            if key in twin[column]:
                assert secure.result[column][key] == twin[column][key]
    assert secure.result["y"]["histogram"] == twin["y"]["histogram"]
    # the coordinator only ever held one reply per round: the sum over sites
    assert all(list(replies) == [SUM] for _, replies in secure.received)
    assert {phase for phase, _ in secure.received} == {"sums", "counts"}


def test_stats_secure_is_exact_where_float_sums_lose_digits() -> None:
    # a large offset: the variance is 1e12 times smaller than the squares, and skew is tiny
    rng = np.random.default_rng(4)
    x = 1e6 + rng.normal(0.0, 3.0, 300)
    frame = pd.DataFrame({"x": x, "w": rng.normal(size=300)})
    params = {"columns": ["x", "w"], "statistics": ["mean", "variance", "sum", "skew", "kurtosis"]}
    # the exact values, by Fraction arithmetic (no code shared with the app)
    values = [Fraction(v) for v in x.tolist()]
    n = len(values)
    mean = sum(values, Fraction(0)) / n
    m2 = sum(((v - mean) ** 2 for v in values), Fraction(0))
    m3 = sum(((v - mean) ** 3 for v in values), Fraction(0))
    m4 = sum(((v - mean) ** 4 for v in values), Fraction(0))
    skew = float(m3 / n) / float(m2 / n) ** 1.5 * math.sqrt(n * (n - 1)) / (n - 2)
    g2 = n * m4 / (m2 * m2) - 3
    kurtosis = float(((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3)))
    results = [drive("stats", params, _sites(frame, s), secure=True).result for s in (1, 3, 7)]
    assert results[0] == results[1] == results[2]  # exact sums: the split changes no bit
    got = results[0]["x"]
    assert got["mean"] == float(mean)
    assert got["variance"] == float(m2 / (n - 1))
    assert got["sum"] == float(mean * n)
    assert got["skew"] == pytest.approx(skew, rel=1e-13)
    assert got["kurtosis"] == pytest.approx(kurtosis, rel=1e-14)
    # at least as accurate as plaintext and as scipy on the pooled values
    plain = drive("stats", params, _sites(frame, 3), secure=False).result["x"]
    exact_skew = abs(got["skew"] - skew)
    assert exact_skew <= abs(plain["skew"] - skew)
    assert exact_skew <= abs(sps.skew(x, bias=False) - skew)


def test_stats_secure_quantiles_without_share_extremes_use_summed_bounds() -> None:
    frame = _frame()
    params = {"columns": ["x"], "quantiles": [0.25, 0.5, 0.7], "statistics": ["count"]}
    for sites in (1, 3, 7):
        got = drive("stats", params, _sites(frame, sites), secure=True).result
        expected = np.quantile(frame.x, [0.25, 0.5, 0.7])
        assert list(got["x"]["quantiles"].values()) == expected.tolist()
    with pytest.raises(AppError, match="quantile 1.0 of column 'x'"):
        drive("stats", {**params, "quantiles": [1.0]}, _sites(frame, 3), secure=True)


def test_stats_secure_bins_come_from_the_bisected_range() -> None:
    frame = _frame()
    params = {"columns": ["x"], "statistics": ["min", "max"], "bins": 3, "share_extremes": True}
    got = drive("stats", params, _sites(frame, 3), secure=True)
    counts, edges = np.histogram(frame.x, bins=3)
    assert got.result["x"]["histogram"] == {"edges": edges.tolist(), "counts": counts.tolist()}
    assert got.result["x"]["min"] == frame.x.min()
    assert got.result["x"]["max"] == frame.x.max()
    assert got.rounds <= 10  # 8 bisection rounds at most, then the histogram


def test_stats_secure_keeps_the_sites_min_count_rules() -> None:
    frame = _frame()
    sites = _sites(frame, 3)
    third = float(np.sort(sites["s0"]["y"])[2])  # s0 holds 3 records below this edge
    edges = [-1.0, float(np.nextafter(third, np.inf)), 10.0]
    with pytest.raises(DataError, match=r"histogram bin \[-1, .* covers [1-4] records"):
        drive("stats", {"columns": ["y"], "bin_edges": edges}, sites, secure=True)
    with pytest.raises(AppError, match="share_extremes"):
        drive("stats", {"statistics": ["min"]}, sites, secure=True)


@pytest.mark.parametrize("sites", [1, 3, 7])
def test_ttest_secure_matches_scipy(sites: int) -> None:
    frame = _frame()
    params = {"column": "x", "group": "g", "groups": ["trt", "ctl"]}
    secure = drive("t-test", params, _sites(frame, sites), secure=True)
    plain = drive("t-test", params, _sites(frame, sites), secure=False)
    a, b = (frame.x[frame.g == g].to_numpy() for g in ("trt", "ctl"))
    test = sps.ttest_ind(a, b, equal_var=False)
    assert secure.result["t"] == pytest.approx(test.statistic, rel=1e-12)
    assert secure.result["p_value"] == pytest.approx(test.pvalue, rel=1e-10)
    assert secure.result["dof"] == pytest.approx(test.df, rel=1e-12)
    assert secure.result["groups"]["trt"]["mean"] == float(sum(map(Fraction, a.tolist())) / len(a))
    _close(plain.result, secure.result, rel=1e-12)
    _close(_twin("t-test", frame, params), secure.result, rel=1e-10)
    assert [phase for phase, _ in secure.received] == ["sums"]


def test_ttest_secure_needs_the_groups() -> None:
    with pytest.raises(AppError, match="secure = true give params.groups"):
        drive("t-test", {"column": "x", "group": "g"}, _sites(_frame(), 3), secure=True)


@pytest.mark.parametrize("sites", [1, 3, 7])
def test_crosstab_secure_on_the_study_levels_matches_scipy_and_pandas(sites: int) -> None:
    frame = _frame(n=700)
    # the study lists a level no record holds ("none"): it is left out, as without levels
    params = {
        "row": "g",
        "column": "h",
        "row_levels": ["trt", "ctl", "none"],
        "column_levels": [3, 1, 2],
    }
    secure = drive("crosstab", params, _sites(frame, sites), secure=True, min_count=2)
    plain = drive(
        "crosstab", {"row": "g", "column": "h"}, _sites(frame, sites), secure=False, min_count=2
    )
    table = pd.crosstab(frame.g, frame.h)
    chi2, p_value, dof, _ = sps.chi2_contingency(table.to_numpy(), correction=False)
    assert secure.result["table"] == {
        str(r): {str(int(c)): int(table.loc[r, c]) for c in table.columns} for r in table.index
    }
    assert secure.result["chi2"] == pytest.approx(chi2, rel=1e-12)
    assert secure.result["p_value"] == pytest.approx(p_value, rel=1e-10)
    assert secure.result["dof"] == dof
    assert secure.result == plain.result
    assert [phase for phase, _ in secure.received] == ["grid"]


def test_crosstab_secure_needs_every_level_and_does_not_name_an_unlisted_one() -> None:
    frame = _frame()
    with pytest.raises(AppError, match="row_levels and params.column_levels"):
        drive("crosstab", {"row": "g", "column": "h"}, _sites(frame, 3), secure=True)
    params = {"row": "g", "column": "h", "row_levels": ["ctl"], "column_levels": [1, 2, 3]}
    with pytest.raises(DataError, match="column 'g' holds a value that params.row_levels") as err:
        drive("crosstab", params, _sites(frame, 3), secure=True)
    assert "trt" not in str(err.value)
    with pytest.raises(AppError, match="both row_levels and column_levels"):
        get_app("crosstab").parse_params({"row": "g", "column": "h", "row_levels": ["a"]})


@pytest.mark.parametrize("sites", [1, 3, 7])
def test_mean_app_secure_gives_the_apps_mean_and_the_pooled_mean(sites: int) -> None:
    frame = _frame()[["x", "y"]]
    secure = drive(MEAN_APP, {}, _sites(frame, sites), secure=True)
    plain = drive(MEAN_APP, {}, _sites(frame, sites), secure=False)
    _close(plain.result, secure.result, rel=1e-14)
    values = frame.to_numpy().ravel()
    assert secure.result["pooled_mean"] == pytest.approx(values.mean(), rel=1e-14)
    # the app's own formula: the unweighted mean of each site's sum over its columns
    local = [
        frame.iloc[p].to_numpy().sum() / 2 for p in np.array_split(np.arange(len(frame)), sites)
    ]
    assert secure.result["mean"] == pytest.approx(np.mean(local), rel=1e-14)
    assert secure.notes == plain.notes


# --- end to end: the real coordinator, node agents and secure-aggregation protocol ------------
E2E = [
    ("t-test", {"column": "x", "group": "g", "groups": ["trt", "ctl"]}),
    (
        "crosstab",
        {"row": "g", "column": "h", "row_levels": ["trt", "ctl"], "column_levels": [1, 2, 3]},
    ),
    (MEAN_APP, {}),
    pytest.param(
        "stats",
        {**STATS, "quantiles": [0.5]},
        marks=pytest.mark.slow,  # 8 bisection rounds, each one or two secure exchanges
    ),
]


@pytest.mark.parametrize(("app", "params"), E2E, ids=["t-test", "crosstab", "mean-app", "stats"])
def test_secure_runs_end_to_end_give_the_sum_semantics_result(
    app: str, params: dict[str, Any]
) -> None:
    from fedflow.runtime.simulate import simulate

    frame = _frame() if app != MEAN_APP else _frame()[["x", "y"]]
    run = simulate(app, params, _sites(frame, 3), secure=True)
    reference = drive(app, params, _sites(frame, 3), secure=True)
    assert run.result == reference.result  # exact sums: the protocol changes no bit
    assert run.rounds == reference.rounds
    plain = simulate(app, params, _sites(frame, 3), secure=False)
    _close(plain.result, run.result, rel=1e-12)


def test_stats_secure_skew_stays_exact_where_floats_overflow() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    x[:3] = [1e-150, 1e150, -3e149]  # x³ and x⁴ overflow float64: scipy and pandas give NaN
    frame = pd.DataFrame({"x": x})
    params = {"statistics": ["skew", "kurtosis"]}
    got = drive("stats", params, _sites(frame, 3), secure=True).result["x"]
    values = [Fraction(v) for v in x.tolist()]
    n = len(values)
    mean = sum(values, Fraction(0)) / n
    m2, m3, m4 = (sum(((v - mean) ** k for v in values), Fraction(0)) for k in (2, 3, 4))
    skew = math.sqrt(float(m3 * m3 * n * n * (n - 1) / (m2**3 * (n - 2) ** 2)))
    kurtosis = float(((n + 1) * (n * m4 / (m2 * m2) - 3) + 6) * (n - 1) / ((n - 2) * (n - 3)))
    assert got["skew"] == pytest.approx(skew, rel=1e-15)
    assert got["kurtosis"] == pytest.approx(kurtosis, rel=1e-15)
    with np.errstate(all="ignore"):
        plain = drive("stats", params, _sites(frame, 3), secure=False).result["x"]
    assert math.isnan(plain["skew"])  # as scipy.stats.skew(x, bias=False) on the pooled values


# --- the fidelity cases, under secure = true ----------------------------------------------------
def _fidelity_cases() -> list[Any]:
    from tests.apps.cases.analytics import CASES

    return [c for c in CASES if c.app in ("stats", "t-test", "crosstab")]


@pytest.mark.parametrize("case", _fidelity_cases(), ids=lambda c: c.id)
def test_fidelity_cases_hold_their_tolerances_under_secure(case: Any) -> None:
    """Each analytics fidelity case on 3 unbalanced sites, under secure aggregation (summed
    replies), against the case's own twin and tolerances; the levels and groups a secure study
    must list are taken from the pooled data, as its author would write them."""
    from fedflow.apps._labels import value_label
    from fedflow.results.compare import compare_results
    from tests.apps.fidelity import dataset, independent_params, split

    parts = split(dataset(case.dataset), 3, "unbalanced")
    pooled = pd.concat(parts, ignore_index=True)
    params = dict(case.params)
    if case.app == "crosstab":
        params["row_levels"] = sorted({value_label(v) for v in pooled[params["row"]]})
        params["column_levels"] = sorted({value_label(v) for v in pooled[params["column"]]})
    if case.app == "t-test" and "groups" not in params:
        params["groups"] = sorted({value_label(v) for v in pooled[params["group"]]})
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    got = drive(case.app, params, sites, secure=True, min_count=case.min_count)
    app = get_app(case.app)
    raw = independent_params(case.app, case.params, pooled)
    reference = app.parse_params(raw)
    needed = list(app.columns(reference))
    central = app.centralized(pooled[needed] if needed else pooled, reference)
    comparison = compare_results(
        app.comparable(got.result), app.comparable(central), tolerances=case.tolerances
    )
    assert comparison.items
    assert comparison.status == "match", [
        (i.path, i.federated, i.centralized) for i in comparison.mismatches[:5]
    ]
