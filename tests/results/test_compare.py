"""The comparison behind --compare: two-sided, tolerance per value, truthful in its JSON."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fedflow.results.compare import ITEMS_PER_GROUP, Tolerance, compare_results, flatten


def test_a_value_present_only_in_the_reference_is_a_mismatch() -> None:
    comparison = compare_results({}, {"a": 1})
    assert comparison.status == "mismatch"
    (item,) = comparison.items
    assert item.path == "a" and item.missing == "federated" and not item.match


def test_a_value_present_only_in_the_federated_result_is_a_mismatch() -> None:
    comparison = compare_results({"a": 1.0, "b": [1, 2]}, {"a": 1.0, "b": [1]})
    assert comparison.status == "mismatch"
    assert [(i.path, i.missing) for i in comparison.mismatches] == [("b[1]", "centralized")]


def test_half_a_timeline_does_not_match() -> None:
    full = {"timeline": [float(t) for t in range(10)]}
    half = {"timeline": full["timeline"][:5]}
    assert compare_results(half, full).status == "mismatch"
    assert len(compare_results(half, full).missing) == 5


def test_nothing_compared_is_not_a_match() -> None:
    assert compare_results({}, {}).status == "mismatch"


def test_each_value_gets_the_tolerance_of_its_longest_prefix_and_records_it() -> None:
    rules = {"": Tolerance(1e-8), "oob": Tolerance(0.0, 0.1), "oob.auc": Tolerance(1e-3)}
    comparison = compare_results(
        {"coef": 1.0, "oob": {"accuracy": 0.95, "auc": 0.9}, "oobx": 2.0},
        {"coef": 1.0 + 1e-12, "oob": {"accuracy": 0.9, "auc": 0.9005}, "oobx": 2.0},
        tolerances=rules,
    )
    by_path = {i.path: i for i in comparison.items}
    assert (by_path["oob.accuracy"].rtol, by_path["oob.accuracy"].atol) == (0.0, 0.1)
    assert (by_path["oob.auc"].rtol, by_path["oob.auc"].atol) == (1e-3, 0.0)
    assert by_path["oobx"].rtol == 1e-8  # a prefix of the name, not of the path
    assert comparison.status == "match"
    doc = comparison.to_dict()
    assert doc["tolerances"]["oob"] == {"rtol": 0.0, "atol": 0.1}
    listed = {i["path"]: i for i in doc["items"]}
    assert listed["oob.accuracy"]["atol"] == 0.1 and listed["oob.accuracy"]["match"] is True


def test_types_must_agree_for_non_numbers() -> None:
    assert compare_results({"ok": True}, {"ok": 1}).status == "mismatch"
    assert compare_results({"s": "a"}, {"s": "a"}).status == "match"
    assert compare_results({"x": None}, {"x": 0.0}).status == "mismatch"
    assert compare_results({"x": math.nan}, {"x": math.nan}).status == "match"


def test_large_groups_are_summarised_but_mismatches_are_listed() -> None:
    n = ITEMS_PER_GROUP * 20
    fed = {"curve": [float(i) for i in range(n)], "median": 3.0}
    ref = {"curve": [float(i) for i in range(n)], "median": 3.0}
    ref["curve"][7] = 99.0
    doc = compare_results(fed, ref).to_dict()
    assert doc["compared"] == n + 1 and doc["mismatched"] == 1
    assert [i["path"] for i in doc["items"]] == ["curve[7]", "median"]
    (summary,) = doc["summarised"]
    assert summary["group"] == "curve[]" and summary["compared"] == n
    assert summary["mismatched"] == 1


leaves = st.one_of(
    st.integers(-1000, 1000), st.floats(allow_nan=False, width=64), st.text(max_size=3)
)
results = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3),
        st.dictionaries(st.text("abc", min_size=1, max_size=2), inner, min_size=1, max_size=3),
    ),
    max_leaves=12,
).map(lambda v: {"r": v})


@given(results)
def test_a_result_matches_itself(result: dict[str, Any]) -> None:
    assert compare_results(result, result).status == "match"


@given(results, st.data())
def test_dropping_any_value_from_either_side_is_a_mismatch(
    result: dict[str, Any], data: st.DataObject
) -> None:
    flat = flatten(result)
    drop = data.draw(st.sampled_from(sorted(flat)))
    rebuilt = {k: v for k, v in flat.items() if k != drop}
    assert compare_results(rebuilt, flat).status == "mismatch"
    assert compare_results(flat, rebuilt).status == "mismatch"


def test_a_star_in_a_tolerance_prefix_stands_for_any_one_key() -> None:
    rules = {"": Tolerance(1e-3), "timeline.*.at_risk": Tolerance(0.0)}
    fed = {"timeline": {"a": {"at_risk": [10, 9], "survival": [1.0, 0.9]}}}
    ref = {"timeline": {"a": {"at_risk": [10, 9.0000001], "survival": [1.0, 0.9000001]}}}
    comparison = compare_results(fed, ref, tolerances=rules)
    by_path = {i.path: i for i in comparison.items}
    assert not by_path["timeline.a.at_risk[1]"].match  # exact rule for every group's counts
    assert (
        by_path["timeline.a.survival[1]"].match and by_path["timeline.a.survival[1]"].rtol == 1e-3
    )
