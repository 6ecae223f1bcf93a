"""Flattening a summed reply into exact values and back: the secure sum equals ``sum_replies``."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.apps.base import Exact, Payload, sum_replies
from fedflow.secure import EncodingError, FixedPoint, ring
from fedflow.secure.layout import check_layout, exact_range, flatten, unflatten


class Reply(Payload, frozen=True):
    n: int
    total: float
    exact: Exact
    values: np.ndarray
    counts: np.ndarray


def _secure_sum(replies: list[Reply]) -> dict:
    """What the protocol computes, without the masks (they cancel: tested in test_protocol)."""
    flats = [flatten(r) for r in replies]
    assert all(f.layout == flats[0].layout for f in flats)
    ranges = [f.range for f in flats if f.range is not None]
    spec = FixedPoint.agree(ranges, len(replies)) if ranges else FixedPoint(0, 0, len(replies))
    total = ring.zeros(flats[0].length, spec.limbs)
    for f in flats:
        total = ring.add(total, f.encode(spec))
    return unflatten(flats[0].layout, spec, total)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**40), 2**40),
            finite,
            st.lists(finite, min_size=3, max_size=3),
            st.lists(st.integers(-(2**30), 2**30), min_size=2, max_size=2),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_the_decoded_sum_equals_sum_replies(sites) -> None:
    replies = [
        Reply(
            n=n,
            total=t,
            exact=(Fraction(v[0]) * Fraction(v[1]), Fraction(3, 8)),
            values=np.array(v),
            counts=np.array(c, dtype=np.int64),
        )
        for n, t, v, c in sites
    ]
    reference = sum_replies(dict(enumerate(replies)), Reply)
    got = _secure_sum(replies)
    assert got["n"] == reference.n and type(got["n"]) is int
    assert got["total"] == reference.total or (np.isinf(got["total"]) and np.isinf(reference.total))
    assert got["exact"] == reference.exact
    assert np.array_equal(got["values"], reference.values) and got["values"].dtype == np.float64
    assert np.array_equal(got["counts"], reference.counts) and got["counts"].dtype == np.int64


def test_an_inexact_float_sum_is_correctly_rounded_not_naively_added() -> None:
    replies = [
        Reply(
            n=1, total=1e16, exact=(), values=np.array([1e16, 0.1]), counts=np.zeros(0, np.int64)
        ),
        Reply(n=1, total=1.0, exact=(), values=np.array([1.0, 0.2]), counts=np.zeros(0, np.int64)),
        Reply(n=1, total=1.0, exact=(), values=np.array([1.0, 0.3]), counts=np.zeros(0, np.int64)),
    ]
    got = _secure_sum(replies)
    # naive float addition gives 1e16 (each 1.0 is lost); the exact sum 1e16 + 2 is representable
    assert (1e16 + 1.0) + 1.0 == 1e16
    assert got["total"] == 1e16 + 2 and got["values"][0] == 1e16 + 2
    assert got["values"][1] == float(Fraction(0.1) + Fraction(0.2) + Fraction(0.3))


def test_layout_names_kinds_and_shapes_in_field_order() -> None:
    flat = flatten(
        Reply(
            n=3,
            total=0.5,
            exact=(Fraction(1, 4),),
            values=np.zeros((2, 3)),
            counts=np.arange(4),
        )
    )
    assert [(f.name, f.kind, f.shape) for f in flat.layout] == [
        ("n", "int", ()),
        ("total", "float", ()),
        ("exact", "exact", (1,)),
        ("values", "float64", (2, 3)),
        ("counts", "int64", (4,)),
    ]
    assert flat.length == 1 + 1 + 1 + 6 + 4
    assert flat.range == (-2, 2)  # 1/4 is the finest bit, 3 < 2^2 the largest
    check_layout(flat.layout, 13)
    with pytest.raises(ValueError, match="13 values, not 12"):
        check_layout(flat.layout, 12)


def test_exact_range_matches_the_float_range_and_refuses_non_dyadic_values() -> None:
    assert exact_range([Fraction(3, 8), 12]) == (-3, 4)
    assert exact_range([0, Fraction(0)]) is None
    with pytest.raises(EncodingError, match="position 1 is not a dyadic"):
        exact_range([1, Fraction(1, 3)])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "field 'total'"),
        (True, "boolean"),
        ("text", "type str cannot be summed"),
    ],
)
def test_unsummable_values_are_refused_naming_the_field(value, message) -> None:
    class One(Payload, frozen=True):
        total: object

    with pytest.raises(EncodingError, match=message):
        flatten(One(total=value))


def test_malformed_layouts_are_refused() -> None:
    from fedflow.secure.layout import Field

    with pytest.raises(ValueError, match="named twice"):
        check_layout([Field("a", "int", ()), Field("a", "int", ())])
    with pytest.raises(ValueError, match="unknown kind"):
        check_layout([Field("a", "pickle", ())])
    with pytest.raises(ValueError, match="kind int has shape"):
        check_layout([Field("a", "int", (2,))])


def test_an_int64_sum_beyond_int64_is_refused() -> None:
    big = Reply(n=0, total=0.0, exact=(), values=np.zeros(0), counts=np.array([2**62], np.int64))
    with pytest.raises(EncodingError, match="int64 range"):
        _secure_sum([big, big])
