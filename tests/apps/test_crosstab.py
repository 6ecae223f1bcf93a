"""crosstab: labels, merging tables with different levels, chi-square against scipy, min_count,
and the one typed phase (``count``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from fedflow.apps import get_app
from fedflow.apps._labels import category_labels, value_label
from fedflow.apps.base import Empty, SiteContext, Table, encode_payload
from fedflow.apps.crosstab import CountTable, Crosstab, chi_square
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate
from tests.apps.wire_spy import run_spied


def _sites(frames: list[pd.DataFrame]) -> dict[str, Table]:
    return {f"s{i}": Table.from_pandas(f.reset_index(drop=True)) for i, f in enumerate(frames)}


def test_category_labels_of_every_kind() -> None:
    assert category_labels(np.array([3, 10, -1])).tolist() == ["3", "10", "-1"]
    assert category_labels(np.array([1.0, 2.5, -0.0, 1e20, 0.1])).tolist() == [
        "1",
        "2.5",
        "0",
        "1e+20",
        "0.1",
    ]
    assert category_labels(np.array(["a", "bb"], dtype=object)).tolist() == ["a", "bb"]
    assert category_labels(np.array([True, False])).tolist() == ["1", "0"]
    assert value_label(2) == "2" and value_label(2.0) == "2" and value_label("2.0") == "2.0"
    assert category_labels(np.array([np.nan])).tolist() == ["nan"]
    # integers beyond 2⁵³ keep every digit, whether labelled in a column or one at a time
    big = np.array([2**53, 2**53 + 1], dtype=np.int64)
    assert category_labels(big).tolist() == ["9007199254740992", "9007199254740993"]
    assert [value_label(v) for v in big] == category_labels(big).tolist()


@pytest.mark.parametrize(
    "values",
    [
        np.array([3, 10, -1, 0, 2**62], dtype=np.int64),
        np.array([True, False]),
        np.array([1.0, 2.5, -0.0, 1e20, 0.1, 1e16, 2.0**53, -7.0, np.nan, np.inf, 5e-324]),
        np.array(["a", "1", "1.0"], dtype=object),
    ],
)
def test_one_label_rule_for_columns_and_single_values(values: np.ndarray) -> None:
    """A site labels its column vectorised, a parameter or a pooled twin one value at a time."""
    assert category_labels(values).tolist() == [value_label(v) for v in values]
    assert category_labels(values).tolist() == [value_label(v) for v in values.tolist()]


def test_chi_square_matches_scipy_without_yates() -> None:
    table = np.array([[12, 5, 9], [3, 30, 7]])
    chi2, dof, p = chi_square(table)
    ref = chi2_contingency(table, correction=False)
    assert (chi2, dof, p) == pytest.approx((ref.statistic, ref.dof, ref.pvalue), rel=1e-12)
    two = np.array([[10, 20], [30, 5]])  # 2×2: scipy would apply Yates unless told not to
    ref = chi2_contingency(two, correction=False)
    assert chi_square(two)[0] == pytest.approx(ref.statistic, rel=1e-12)
    assert chi_square(np.array([[4, 6]])) == (0.0, 0, 1.0)
    with pytest.raises(AppError, match="empty"):
        chi_square(np.zeros((0, 0)))


def test_sites_with_different_levels_merge_into_one_sorted_table() -> None:
    a = pd.DataFrame({"r": [1] * 6 + [2] * 5, "c": ["x"] * 11})
    b = pd.DataFrame({"r": [10] * 5 + [1] * 5, "c": ["y"] * 5 + ["x"] * 5})
    sim = simulate("crosstab", {"row": "r", "column": "c"}, _sites([a, b]))
    assert sim.rounds == 1
    assert sim.result["table"] == {
        "1": {"x": 11, "y": 0},
        "10": {"x": 0, "y": 5},
        "2": {"x": 5, "y": 0},
    }
    assert list(sim.result["table"]) == ["1", "10", "2"]  # sorted as strings
    pooled = pd.concat([a, b])
    ref = Crosstab().centralized(pooled, Crosstab.parse_params({"row": "r", "column": "c"}))
    assert sim.result["table"] == ref["table"]
    assert sim.result["chi2"] == pytest.approx(ref["chi2"], rel=1e-12)
    assert sim.result["n"] == 21 and sim.result["dof"] == 2


def test_text_and_float_categories_cross() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"grade": rng.choice(["I", "II", "III"], 600), "dose": rng.choice([0.5, 1.0, 2.0], 600)}
    )
    sim = simulate(
        "crosstab", {"row": "grade", "column": "dose"}, _sites([frame.iloc[i::3] for i in range(3)])
    )
    assert list(sim.result["table"]["I"]) == ["0.5", "1", "2"]
    ref = chi2_contingency(pd.crosstab(frame.grade, frame.dose).to_numpy(), correction=False)
    assert sim.result["chi2"] == pytest.approx(ref.statistic, rel=1e-12)
    assert sim.result["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_a_small_cell_makes_the_site_refuse_naming_the_cell() -> None:
    frame = pd.DataFrame({"r": ["a"] * 10 + ["b"] * 2, "c": ["x"] * 12})
    with pytest.raises(DataError, match="cell r = 'b', c = 'x' covers 2 records") as info:
        simulate("crosstab", {"row": "r", "column": "c"}, _sites([frame]), min_count=5)
    assert info.value.site == "s0"
    # with min_count 2 the same table is fine
    sim = simulate("crosstab", {"row": "r", "column": "c"}, _sites([frame]), min_count=2)
    assert sim.result["table"] == {"a": {"x": 10}, "b": {"x": 2}}


def test_a_site_with_fewer_than_min_count_rows_never_answers() -> None:
    app = get_app("crosstab")
    params = app.parse_params({"row": "r", "column": "c"})
    table = Table({"r": np.zeros(3, dtype=np.int64), "c": np.zeros(3, dtype=np.int64)})
    with pytest.raises(DataError, match="covers 3 records, fewer than min_count = 5"):
        app.local(table, params, "count", Empty(), SiteContext(site="s", min_count=5))


def test_site_reply_holds_counts_and_labels_only() -> None:
    app = get_app("crosstab")
    params = app.parse_params({"row": "r", "column": "c"})
    table = Table({"r": np.array([1, 1, 2, 2, 2] * 2), "c": np.array(["u"] * 10, dtype=object)})
    reply = app.local(table, params, "count", Empty(), SiteContext(site="s", min_count=1))
    assert isinstance(reply, CountTable)
    assert set(encode_payload(reply)) == {"rows", "columns", "counts"}
    assert reply.rows.dtype.kind == "U" and reply.counts.tolist() == [[4], [6]]


def test_the_wire_carries_one_count_table_per_site_with_every_level() -> None:
    a = pd.DataFrame({"r": [1] * 6 + [2] * 5 + [3] * 5, "c": ["x"] * 11 + ["y"] * 5})
    b = pd.DataFrame({"r": [10] * 5 + [1] * 5, "c": ["y"] * 5 + ["x"] * 5})
    spied = run_spied("crosstab", {"row": "r", "column": "c"}, _sites([a, b]))
    assert [e.phase for e in spied.exchanges] == ["count", "count"]
    replies = spied.replies("count")
    assert all(set(r) == {"rows", "columns", "counts"} for r in replies)
    assert [list(r["rows"]) for r in replies] == [["1", "2", "3"], ["1", "10"]]
    # every level any site holds reaches the result, each with its full row
    assert list(spied.result["table"]) == ["1", "10", "2", "3"]
    assert all(list(row) == ["x", "y"] for row in spied.result["table"].values())
    assert (
        spied.result["n"]
        == len(a) + len(b)
        == sum(sum(row.values()) for row in spied.result["table"].values())
    )


@pytest.mark.parametrize(
    "params,message",
    [
        ({"row": "a", "column": "a"}, "both 'a'"),
        ({"row": "a"}, "column"),
        ({"row": "a", "column": "b", "rows": "c"}, "unknown key 'rows'"),
    ],
)
def test_bad_params(params: dict[str, str], message: str) -> None:
    with pytest.raises(AppError, match=message):
        Crosstab.parse_params(params)
