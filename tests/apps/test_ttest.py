"""t-test: Welch maths against scipy, default and given groups, labels as strings, min_count,
and the phases' typed payloads (``levels``, ``moments``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_ind

from fedflow.apps import get_app
from fedflow.apps.base import Empty, SiteContext, Table, encode_payload
from fedflow.apps.ttest import Groups, Levels, TTest, welch_test
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate
from tests.apps.wire_spy import run_spied


def _sites(frame: pd.DataFrame, n: int) -> dict[str, Table]:
    parts = np.array_split(np.arange(len(frame)), n)
    return {
        f"s{i}": Table.from_pandas(frame.iloc[p].reset_index(drop=True))
        for i, p in enumerate(parts)
    }


def _frame(seed: int = 0, n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(["treated", "control"], n)
    value = rng.normal(10.0, 2.0, n) + np.where(group == "treated", 1.0, 0.0) * rng.gamma(
        2.0, 1.0, n
    )
    return pd.DataFrame({"value": value, "arm": group, "site_code": rng.integers(0, 3, n)})


def test_welch_test_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(0.5, 3, 80)
    t, dof, p = welch_test((30, a.mean(), a.var(ddof=1)), (80, b.mean(), b.var(ddof=1)))
    ref = ttest_ind(a, b, equal_var=False)
    assert (t, dof, p) == pytest.approx((ref.statistic, ref.df, ref.pvalue), rel=1e-12)
    with pytest.raises(AppError, match="at least two"):
        welch_test((1, 0.0, 0.0), (5, 1.0, 1.0))
    with pytest.raises(AppError, match="zero variance"):
        welch_test((3, 1.0, 0.0), (5, 2.0, 0.0))


def test_default_groups_are_the_two_levels_in_string_order() -> None:
    frame = _frame()
    sim = simulate("t-test", {"column": "value", "group": "arm"}, _sites(frame, 3))
    assert sim.rounds == 2
    assert list(sim.result["groups"]) == ["control", "treated"]
    a = frame.value[frame.arm == "control"]
    b = frame.value[frame.arm == "treated"]
    ref = ttest_ind(a, b, equal_var=False)
    assert sim.result["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert sim.result["dof"] == pytest.approx(ref.df, rel=1e-12)
    assert sim.result["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert sim.result["mean_difference"] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    assert sim.result["groups"]["control"]["count"] == len(a)
    assert sim.result["groups"]["treated"]["variance"] == pytest.approx(b.var(), rel=1e-12)


def test_given_groups_set_the_order_and_compare_as_strings() -> None:
    frame = _frame()
    params = {"column": "value", "group": "site_code", "groups": [2, "0"]}
    sim = simulate("t-test", params, _sites(frame, 2))
    assert sim.rounds == 1
    assert list(sim.result["groups"]) == ["2", "0"]
    ref = ttest_ind(
        frame.value[frame.site_code == 2], frame.value[frame.site_code == 0], equal_var=False
    )
    assert sim.result["t"] == pytest.approx(ref.statistic, rel=1e-12)


def test_more_than_two_levels_is_an_error_listing_them() -> None:
    frame = _frame()
    with pytest.raises(AppError, match=r"'site_code' has 3 levels \('0', '1', '2'\); choose two"):
        simulate("t-test", {"column": "value", "group": "site_code"}, _sites(frame, 2))


def test_a_group_no_site_holds_is_an_error() -> None:
    with pytest.raises(AppError, match="no site holds records with arm = 'placebo'"):
        simulate(
            "t-test",
            {"column": "value", "group": "arm", "groups": ["treated", "placebo"]},
            _sites(_frame(), 2),
        )


def test_a_small_group_at_a_site_makes_it_refuse_but_an_absent_one_is_fine() -> None:
    frame = _frame(n=60)
    small = pd.DataFrame(
        {"value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "arm": ["treated"] * 3 + ["x"] * 3}
    )
    sites = _sites(frame, 2) | {"small": Table.from_pandas(small)}
    with pytest.raises(DataError, match="group arm = 'treated' covers 3 records") as info:
        simulate(
            "t-test", {"column": "value", "group": "arm", "groups": ["treated", "control"]}, sites
        )
    assert info.value.site == "small"
    only_x = pd.DataFrame({"value": np.arange(6.0), "arm": ["x"] * 6})
    sites = _sites(frame, 2) | {"other": Table.from_pandas(only_x)}
    sim = simulate(
        "t-test", {"column": "value", "group": "arm", "groups": ["treated", "control"]}, sites
    )
    ref = ttest_ind(
        frame.value[frame.arm == "treated"], frame.value[frame.arm == "control"], equal_var=False
    )
    assert sim.result["t"] == pytest.approx(ref.statistic, rel=1e-12)


def test_level_round_reveals_labels_only() -> None:
    app = get_app("t-test")
    params = app.parse_params({"column": "value", "group": "arm"})
    table = Table.from_pandas(_frame(n=40))
    reply = app.local(table, params, "levels", Empty(), SiteContext(site="s"))
    assert reply == Levels(levels=["control", "treated"])
    assert encode_payload(reply) == {"levels": ["control", "treated"]}
    with pytest.raises(DataError, match="covers 3 records"):
        app.local(Table.from_pandas(_frame(n=3)), params, "levels", Empty(), SiteContext("s"))


def test_moments_come_back_in_the_order_asked() -> None:
    app = get_app("t-test")
    params = app.parse_params({"column": "value", "group": "arm"})
    frame = _frame(n=40)
    table = Table.from_pandas(frame)
    ask = app.local(
        table, params, "moments", Groups(groups=("treated", "control")), SiteContext("s")
    )
    treated = frame.value[frame.arm == "treated"]
    assert ask.a.n == len(treated) and ask.a.mean == pytest.approx(treated.mean(), rel=1e-14)
    swapped = app.local(
        table, params, "moments", Groups(groups=("control", "treated")), SiteContext("s")
    )
    assert (swapped.a, swapped.b) == (ask.b, ask.a)


def test_the_wire_carries_labels_then_moments_per_group() -> None:
    frame = _frame()
    spied = run_spied("t-test", {"column": "value", "group": "arm"}, _sites(frame, 3))
    assert [e.phase for e in spied.exchanges] == ["levels"] * 3 + ["moments"] * 3
    assert all(set(r) == {"levels"} for r in spied.replies("levels"))
    moments = [e for e in spied.exchanges if e.phase == "moments"]
    assert all(e.task == {"groups": ["control", "treated"]} for e in moments)
    for e in moments:
        assert set(e.reply) == {"a", "b"}
        assert all(set(e.reply[g]) == {"n", "mean", "m2"} for g in ("a", "b"))
    # the result names the groups in the order asked, and a is the first of them
    assert list(spied.result["groups"]) == ["control", "treated"]
    control = frame.value[frame.arm == "control"]
    assert spied.result["groups"]["control"]["count"] == len(control)
    assert sum(e.reply["a"]["n"] for e in moments) == len(control)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"column": "v", "group": "v"}, "both 'v'"),
        ({"column": "v", "group": "g", "groups": ["a"]}, "two groups, not 1"),
        ({"column": "v", "group": "g", "groups": [1, "1"]}, "group '1' twice"),
        ({"column": "v", "group": "g", "groups": [1.0, 1]}, "group '1' twice"),
        ({"column": "v", "group": "g", "group_values": [1, 2]}, "unknown key 'group_values'"),
    ],
)
def test_bad_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match=message):
        TTest.parse_params(params)


def test_text_column_is_refused_at_resolve() -> None:
    app = TTest()
    with pytest.raises(AppError, match="'value' is not numeric"):
        app.resolve(
            app.parse_params({"column": "value", "group": "arm"}), {"value": "str", "arm": "str"}
        )


def test_one_level_or_a_single_record_group_is_an_error() -> None:
    one_level = pd.DataFrame({"value": np.arange(10.0), "arm": ["a"] * 10})
    with pytest.raises(AppError, match=r"'arm' has 1 level \('a'\)"):
        simulate("t-test", {"column": "value", "group": "arm"}, _sites(one_level, 2))
    single = pd.DataFrame({"value": np.arange(10.0), "arm": ["a"] * 9 + ["b"]})
    with pytest.raises(AppError, match="arm = 'b' has a single record"):
        simulate("t-test", {"column": "value", "group": "arm"}, _sites(single, 1), min_count=1)
