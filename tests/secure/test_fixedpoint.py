"""Exact fixed-point encodings: sums and products of float64 values keep every digit."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.secure import Clipped64, EncodingError, FixedPoint, exponent_range, ring

TINY = 5e-324  # the smallest subnormal
EXTREMES = [
    0.0,
    -0.0,
    TINY,
    -TINY,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1e308,
    0.1,
    -3.5,
]


def _ring_sum(spec: FixedPoint, vectors: list) -> np.ndarray:
    total = ring.zeros(len(vectors[0]), spec.limbs)
    for v in vectors:
        total = ring.add(total, spec.encode(v))
    return total


def test_the_full_range_holds_every_float64_and_sums_exactly() -> None:
    sites = [np.array(EXTREMES), np.array(EXTREMES[::-1]), np.array([1e308] + [TINY] * 8)]
    spec = FixedPoint.full(terms=3)
    for values in sites:
        assert spec.decode(spec.encode(values)) == [Fraction(v) for v in values]
    total = spec.decode(_ring_sum(spec, sites))
    exact = [sum(Fraction(float(s[j])) for s in sites) for j in range(len(EXTREMES))]
    assert total == exact
    assert list(spec.decode_float(_ring_sum(spec, sites))) == [float(x) for x in exact]
    # the sum is exact in the ring; only its float64 decoding overflows
    big = [np.array([1.7976931348623157e308, -1e308])] * 3
    assert spec.decode(_ring_sum(spec, big)) == [
        3 * Fraction(1.7976931348623157e308),
        -3 * Fraction(1e308),
    ]
    assert list(spec.decode_float(_ring_sum(spec, big))) == [math.inf, -math.inf]


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(finite, min_size=4, max_size=4), min_size=2, max_size=9))
def test_agreed_range_sums_are_exact(sites: list[list[float]]) -> None:
    arrays = [np.array(s) for s in sites]
    spec = FixedPoint.agree((exponent_range(a) for a in arrays), terms=len(arrays))
    total = spec.decode(_ring_sum(spec, arrays))
    assert total == [sum(Fraction(s[j]) for s in sites) for j in range(4)]
    # the float decode is the correctly rounded exact sum
    for got, want in zip(spec.decode_float(_ring_sum(spec, arrays)), total, strict=True):
        try:
            assert got == float(want)
        except OverflowError:
            assert math.isinf(got)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                finite.filter(lambda v: abs(v) < 1e150), finite.filter(lambda v: abs(v) < 1e150)
            ),
            min_size=3,
            max_size=3,
        ),
        min_size=2,
        max_size=7,
    )
)
def test_sums_of_products_are_exact(sites: list[list[tuple[float, float]]]) -> None:
    """x·y of two float64 values has up to 106 significant bits: encoded exactly, summed exactly."""
    xs = [np.array([p[0] for p in s]) for s in sites]
    ys = [np.array([p[1] for p in s]) for s in sites]
    fx = FixedPoint.agree((exponent_range(x) for x in xs), terms=len(sites))
    fy = FixedPoint.agree((exponent_range(y) for y in ys), terms=len(sites))
    spec = fx.product(fy)
    products = [
        [Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, y, strict=True)]
        for x, y in zip(xs, ys, strict=True)
    ]
    total = ring.zeros(3, spec.limbs)
    for p in products:
        total = ring.add(total, spec.encode(p))
    assert spec.decode(total) == [sum(p[j] for p in products) for j in range(3)]


def test_products_of_extreme_values_in_the_full_range() -> None:
    spec = FixedPoint.full(2).product(FixedPoint.full(2))
    pairs = [
        (TINY, TINY),
        (-1.7976931348623157e308, 1.7976931348623157e308),
        (0.1, 0.1),
        (-TINY, 3.0),
    ]
    products = [Fraction(a) * Fraction(b) for a, b in pairs]
    doubled = spec.decode(ring.add(spec.encode(products), spec.encode(products)))
    assert doubled == [2 * p for p in products]


def test_values_outside_the_range_are_refused_naming_the_value() -> None:
    spec = FixedPoint(lsb=-10, msb=4, terms=3)
    assert spec.decode(spec.encode(np.array([15.5, -0.0009765625]))) == [
        Fraction(31, 2),
        Fraction(-1, 1024),
    ]
    with pytest.raises(EncodingError, match=r"value 16.0 at position 1 lies outside"):
        spec.encode(np.array([1.0, 16.0]))
    with pytest.raises(EncodingError, match=r"value 0.1 at position 0 has bits finer"):
        spec.encode(np.array([0.1]))
    with pytest.raises(EncodingError, match="not finite"):
        spec.encode(np.array([1.0, np.nan]))
    with pytest.raises(EncodingError, match="finer"):
        spec.encode([Fraction(1, 3)])
    with pytest.raises(EncodingError, match="lies outside"):
        spec.encode([-16])
    with pytest.raises(EncodingError, match="NaN or infinity"):
        exponent_range([np.inf])


def test_subnormals_and_zeros_within_the_declared_range() -> None:
    values = np.array([TINY, 3 * TINY, 0.0, -2 * TINY])
    lsb, msb = exponent_range(values)
    assert lsb == -1074 and msb == -1072  # 3·2^-1074 < 2^-1072
    spec = FixedPoint(lsb, msb, terms=2)
    assert spec.limbs == 1
    assert list(spec.decode_float(ring.add(spec.encode(values), spec.encode(values)))) == [
        2 * TINY,
        6 * TINY,
        0.0,
        -4 * TINY,
    ]
    assert exponent_range(np.zeros(3)) == (0, 0)


def test_the_ring_is_wide_enough_for_the_worst_case_sum() -> None:
    spec = FixedPoint(lsb=0, msb=62, terms=1000)
    top = np.full(1, 2.0**62 - 2**9)  # the largest float64 below 2^62
    total = ring.zeros(1, spec.limbs)
    for _ in range(1000):
        total = ring.add(total, spec.encode(top))
    assert spec.decode(total) == [1000 * Fraction(2**62 - 2**9)]
    assert spec.decode(ring.neg(total)) == [-1000 * Fraction(2**62 - 2**9)]


def test_clipped_64_bit_ring_meets_its_error_bound() -> None:
    rng = np.random.default_rng(0)
    sites = [rng.uniform(-8, 8, 10_000) for _ in range(10)]
    sites[0][0] = 100.0  # clipped to 8
    codec = Clipped64(clip=8.0, terms=10)
    total = ring.zeros(10_000, 1)
    clipped = 0
    for s in sites:
        encoded, count = codec.encode(s)
        clipped += count
        total = ring.add(total, encoded)
    assert clipped == 1
    expected = np.sum([np.clip(s, -8, 8) for s in sites], axis=0)
    error = np.abs(codec.decode(total) - expected)
    assert error.max() <= codec.error_bound + 4 * np.finfo(float).eps * 80
    assert codec.error_bound < 1e-15
    with pytest.raises(EncodingError, match="NaN"):
        codec.encode(np.array([np.nan]))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False, min_value=-(2.0**60), max_value=2.0**60),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 12),
    st.integers(0, 4),
)
def test_the_narrow_float_encoding_equals_the_exact_one(
    values: list[float], below: int, above: int
) -> None:
    array = np.array(values)
    lsb, msb = exponent_range(array)
    spec = FixedPoint(lsb - below, max(lsb, msb) + above, 10)
    encoded = spec.encode(array)  # one or two limbs: the float-only path when it fits
    scale = Fraction(2) ** -spec.lsb
    exact = [int(Fraction(v) * scale) for v in values]
    assert ring.to_ints(encoded) == exact
    assert spec.decode(encoded) == [Fraction(v) for v in values]


def test_the_narrow_encoding_still_refuses_naming_the_value() -> None:
    spec = FixedPoint(-10, 10, 3)
    with pytest.raises(EncodingError, match="position 1 has bits finer"):
        spec.encode(np.array([1.0, 2.0**-11, 3.0]))
    with pytest.raises(EncodingError, match="position 2 lies outside"):
        spec.encode(np.array([1.0, -2.0, 2.0**10]))
    with pytest.raises(EncodingError, match="position 0 is not finite"):
        spec.encode(np.array([np.nan, 1.0]))


def test_negative_values_whose_low_word_is_zero_encode_exactly() -> None:
    spec = FixedPoint(-64, 4, 3)  # −1.0 is −2^64 in the ring: a zero low word, a borrow
    values = np.array([-1.0, -2.0, 1.0, -0.5, -(2.0**-64), 0.0])
    assert ring.to_ints(spec.encode(values)) == [int(Fraction(v) * 2**64) for v in values]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_short_and_long_vectors_get_the_same_exponent_range(values: list[float]) -> None:
    short = np.array(values)
    long = np.tile(short, 65 // len(values) + 1)  # over 64 values: the vectorised path
    assert exponent_range(short) == exponent_range(long)
    lsb, msb = exponent_range(short)
    if any(values):  # tight: every value a multiple of 2^lsb below 2^msb, one at each bound
        exact = [Fraction(v) for v in values if v]
        assert all((x / Fraction(2) ** lsb).denominator == 1 for x in exact)
        assert any((x / Fraction(2) ** (lsb + 1)).denominator != 1 for x in exact)
        assert max(abs(x) for x in exact) < Fraction(2) ** msb <= 2 * max(abs(x) for x in exact)
