"""Merge functions of ``fedflow.apps._merge``, each against the pooled computation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fedflow.apps._merge import (
    KEY_RANGE,
    QUANTILE_METHODS,
    SMALL_ABOVE,
    SMALL_BELOW,
    bisection_candidates,
    combine_comoments,
    combine_moments,
    combine_moments4,
    cut_count_bounds,
    exact_moments,
    exact_power_sums,
    exact_product_sum,
    exact_to_float,
    float_keys,
    float_to_key,
    interpolate,
    key_to_float,
    merge_count_tables,
    narrow,
    quantile_positions,
    suppress_cut_counts,
)


def _split(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


def test_combine_moments_matches_pooled_even_with_a_large_offset() -> None:
    rng = np.random.default_rng(1)
    x = 1e6 + rng.normal(size=300)  # Σx² − n·mean² would lose half the digits here
    parts = [
        (float(len(p)), float(p.mean()), float(((p - p.mean()) ** 2).sum()))
        for p in _split(x, [10, 200, 1, 89])
    ]
    n, mean, m2 = combine_moments(parts + [(0.0, 0.0, 0.0)])
    assert n == 300
    assert mean == pytest.approx(x.mean(), rel=1e-15)
    assert m2 / (n - 1) == pytest.approx(np.var(x, ddof=1), rel=1e-9)


def test_combine_comoments_matches_numpy_cov() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(250, 4)) @ rng.normal(size=(4, 4)) + np.array([1e6, -3.0, 0.0, 42.0])
    parts = []
    for p in _split(x, [7, 120, 3, 120]):
        centred = p - p.mean(axis=0)
        parts.append((float(len(p)), p.mean(axis=0), centred.T @ centred))
    n, mean, c = combine_comoments(parts)
    assert n == 250
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(c / (n - 1), np.cov(x, rowvar=False), rtol=1e-9)


def test_combine_comoments_skips_empty_parts_and_checks_shapes() -> None:
    one = (2.0, np.array([1.0, 2.0]), np.eye(2))
    empty = (0.0, np.zeros(2), np.zeros((2, 2)))
    n, mean, c = combine_comoments([empty, one])
    assert n == 2 and mean.tolist() == [1.0, 2.0] and c.tolist() == np.eye(2).tolist()
    with pytest.raises(ValueError, match="shape"):
        combine_comoments([one, (1.0, np.zeros(3), np.zeros((3, 3)))])
    with pytest.raises(ValueError, match="no parts"):
        combine_comoments([])


def test_float_keys_sort_like_floats_and_round_trip() -> None:
    values = np.array(
        [
            -math.inf,
            -1e308,
            -1.0,
            -5e-324,
            -0.0,
            0.0,
            5e-324,
            2.2250738585072014e-308,
            1.0,
            math.inf,
        ]
    )
    keys = float_keys(values)
    assert keys.dtype == np.uint64
    assert all(int(a) <= int(b) for a, b in zip(keys, keys[1:], strict=False))
    assert keys[4] == keys[5]  # -0.0 counts as +0.0
    for value, key in zip(values, keys, strict=True):
        assert float_to_key(value) == int(key)
        assert key_to_float(int(key)) == value
    # neighbouring floats have neighbouring keys, on both sides of zero
    for x in (1.0, -1.0, 123.456, -7e-300):
        assert float_to_key(np.nextafter(x, math.inf)) == float_to_key(x) + 1
    assert float_to_key(5e-324) == float_to_key(0.0) + 1
    # the key of -0.0 lies between and is never produced (-0.0 counts as +0.0)
    assert float_to_key(-5e-324) == float_to_key(0.0) - 2
    assert (float_to_key(-math.inf), float_to_key(math.inf)) == KEY_RANGE


def test_bisection_candidates_cover_small_intervals_and_split_large_ones() -> None:
    assert bisection_candidates(5, 5, 255) == []
    assert bisection_candidates(10, 13, 255) == [10, 11, 12]
    assert bisection_candidates(0, 255, 255) == list(range(255))
    big = bisection_candidates(0, 2**64 - 1, 255)
    assert len(big) == 255 and big == sorted(big)
    assert max(np.diff([-1, *big, 2**64 - 1])) == 2**56


@pytest.mark.parametrize("per_round,rounds", [(1, 64), (15, 16), (255, 8)])
def test_bisection_resolves_the_whole_float_line_in_the_stated_rounds(
    per_round: int, rounds: int
) -> None:
    """Worst case: the target always sits in the largest group of keys."""
    lo, hi = KEY_RANGE
    for _ in range(rounds):
        candidates = bisection_candidates(lo, hi, per_round)
        ends = [*candidates, hi]
        starts = [lo, *(c + 1 for c in candidates)]
        lo, hi = max(zip(starts, ends, strict=True), key=lambda g: g[1] - g[0])
    assert lo == hi


def _bisect(data: np.ndarray, rank: int, per_round: int) -> tuple[float, int]:
    keys = np.sort(float_keys(data))
    lo, hi = KEY_RANGE
    rounds = 0
    while lo < hi:
        candidates = bisection_candidates(lo, hi, per_round)
        counts = np.searchsorted(keys, np.array(candidates, dtype=np.uint64), side="right")
        lo, hi = narrow(lo, hi, rank, candidates, counts.tolist())
        rounds += 1
    return key_to_float(lo), rounds


@pytest.mark.parametrize("per_round", [1, 15, 255])
def test_bisection_finds_every_order_statistic_exactly(per_round: int) -> None:
    rng = np.random.default_rng(3)
    data = np.concatenate(
        [rng.normal(size=40) * 10.0 ** rng.integers(-5, 5, 40), [0.0, -0.0, 3.0, 3.0]]
    )
    ordered = np.sort(data)
    for rank in (0, 1, 17, 42, len(data) - 1):
        value, rounds = _bisect(data, rank, per_round)
        assert value == ordered[rank]
        assert rounds <= math.ceil(64 / math.log2(per_round + 1))


def test_narrow_ignores_undecided_candidates() -> None:
    # candidate 10 may hold 2..6 records: undecided for rank 4; candidate 20 holds >= 7
    assert narrow(0, 100, 4, [10, 20], [2, 7], [6, 9]) == (0, 20)
    assert narrow(0, 100, 4, [10, 20], [5, 9], [5, 9]) == (0, 10)
    assert narrow(0, 100, 4, [10, 20], [1, 3], [1, 4]) == (21, 100)


def test_suppressed_cut_counts_and_their_bounds() -> None:
    counts = np.array([0, 1, 4, 5, 15, 16, 19, 20])
    coded = suppress_cut_counts(counts, 20, 5)
    assert coded.tolist() == [SMALL_BELOW] * 3 + [5, 15] + [SMALL_ABOVE] * 3
    low, high = cut_count_bounds(coded, 20, 5)
    assert (low <= counts).all() and (counts <= high).all()
    assert low.tolist() == [0, 0, 0, 5, 15, 16, 16, 16]
    assert high.tolist() == [4, 4, 4, 5, 15, 20, 20, 20]
    # a site too small for both sides: the bounds still hold the true count
    for count in range(8):
        coded = suppress_cut_counts(np.array([count]), 7, 5)
        low, high = cut_count_bounds(coded, 7, 5)
        assert coded[0] < 0 and low[0] <= count <= high[0]
    # min_count 1 withholds nothing
    assert suppress_cut_counts(counts, 20, 1).tolist() == counts.tolist()


def test_withheld_counts_never_pin_a_sites_minimum() -> None:
    """Bisecting for the pooled minimum stalls: every site's low counts are withheld."""
    sites = [np.array([3.0, 4.0, 9.0, 9.5, 10.0, 11.0]), np.array([5.0, 6.0, 7.0, 8.0, 12.0, 13.0])]
    keys = [np.sort(float_keys(x)) for x in sites]
    lo, hi = KEY_RANGE
    for _ in range(20):
        candidates = bisection_candidates(lo, hi, 255)
        low = np.zeros(len(candidates), dtype=np.int64)
        high = np.zeros(len(candidates), dtype=np.int64)
        for k in keys:
            counts = np.searchsorted(k, np.array(candidates, dtype=np.uint64), side="right")
            site_low, site_high = cut_count_bounds(
                suppress_cut_counts(counts, len(k), 3), len(k), 3
            )
            low += site_low
            high += site_high
        new = narrow(lo, hi, 0, candidates, low.tolist(), high.tolist())
        if new == (lo, hi):
            break
        lo, hi = new
    assert lo < hi  # never resolved
    assert key_to_float(lo) <= 3.0 <= key_to_float(hi)


@pytest.mark.parametrize("method", QUANTILE_METHODS)
def test_quantile_positions_reproduce_numpy(method: str) -> None:
    rng = np.random.default_rng(4)
    for n in (1, 2, 5, 10, 101):
        data = np.sort(rng.normal(size=n))
        qs = [0.0, 0.01, 0.25, 0.5, 0.7, 0.99, 1.0]
        for q, (i, g) in zip(qs, quantile_positions(n, qs, method), strict=True):
            assert 0 <= i < n and 0.0 <= g < 1.0
            value = interpolate(data[i], data[min(i + 1, n - 1)], g)
            expected = np.quantile(data, q, method=method)
            assert value == pytest.approx(expected, rel=1e-13, abs=1e-15)


def test_interpolate_is_exact_at_the_ends() -> None:
    assert interpolate(1.0, 3.0, 0.0) == 1.0
    assert interpolate(1.0, 3.0, 0.5) == 2.0
    assert interpolate(0.1, 0.7, 0.999999) <= 0.7


def test_merge_count_tables_unions_levels_sorted_as_strings() -> None:
    rows, cols, table = merge_count_tables(
        [
            (["2", "10"], ["a"], np.array([[1], [2]])),
            (["2"], ["b", "a"], np.array([[5, 7]])),
            ([], [], np.zeros((0, 0), dtype=np.int64)),
        ]
    )
    assert rows == ["10", "2"] and cols == ["a", "b"]
    assert table.tolist() == [[2, 0], [8, 5]]
    with pytest.raises(ValueError, match="shape"):
        merge_count_tables([(["x"], ["y", "z"], np.array([[1]]))])


# --- higher moments and exact sums ----------------------------------------------------------
def _central(x: np.ndarray) -> tuple[float, float, float, float, float]:
    mean = float(x.mean())
    d = x - mean
    return float(len(x)), mean, float((d**2).sum()), float((d**3).sum()), float((d**4).sum())


def test_combine_moments4_matches_scipy_skew_and_kurtosis_of_the_pooled_values() -> None:
    from scipy import stats as sps

    rng = np.random.default_rng(5)
    x = 1e4 + rng.gamma(2.0, 3.0, 400)  # skewed, with an offset
    merged: tuple[float, float, float, float, float] = (0, 0.0, 0.0, 0.0, 0.0)
    for part in _split(x, [1, 7, 300, 2, 90]):
        merged = combine_moments4(merged, _central(part))
    n, mean, m2, m3, m4 = merged
    assert n == 400
    assert mean == pytest.approx(x.mean(), rel=1e-15)
    assert m2 / n == pytest.approx(sps.moment(x, 2), rel=1e-10)
    assert m3 / n == pytest.approx(sps.moment(x, 3), rel=1e-8)
    assert m4 / n == pytest.approx(sps.moment(x, 4), rel=1e-9)
    # one part comes back unchanged, bit for bit
    assert combine_moments4((0, 0.0, 0.0, 0.0, 0.0), _central(x)) == _central(x)


@pytest.mark.parametrize(
    "values",
    [
        [1.5, -2.25, 3.0, 0.0, -0.0],
        [1e300, -1e300, 5e-324, 2.2250738585072014e-308, 1.0],  # huge, subnormal, tiny normal
        [0.1, 0.2, 0.3, 1e16, -1e16, 1.0],  # float sums lose every digit here
    ],
)
def test_exact_power_sums_and_products_equal_fraction_arithmetic(values: list[float]) -> None:
    x = np.array(values)
    expected = [sum((Fraction(v) ** k for v in values), Fraction(0)) for k in range(1, 5)]
    assert exact_power_sums(x, 4) == expected
    y = x[::-1].copy()
    assert exact_product_sum(x, y) == sum(
        (Fraction(a) * Fraction(b) for a, b in zip(values, y.tolist(), strict=True)), Fraction(0)
    )
    assert all(s.denominator & (s.denominator - 1) == 0 for s in expected)  # dyadic, as sent


def test_exact_power_sums_of_many_values_and_of_none() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 1e3, 5000) * 2.0 ** rng.integers(-40, 40, 5000)
    exact = [Fraction(v) for v in x.tolist()]
    s1, s2 = exact_power_sums(x, 2)
    assert s1 == sum(exact, Fraction(0))
    assert s2 == sum((v**2 for v in exact), Fraction(0))
    assert exact_power_sums(x, 4) == [sum((v**k for v in exact), Fraction(0)) for k in (1, 2, 3, 4)]
    # the widest mantissas, many per exponent: no int64 carry may be lost
    widest = np.full(9000, 2.0**53 - 1)
    widest[::3] *= -1
    assert exact_power_sums(widest, 4) == [
        sum((Fraction(v) ** k for v in widest.tolist()), Fraction(0)) for k in (1, 2, 3, 4)
    ]
    assert exact_product_sum(widest, widest[::-1].copy()) == sum(
        (
            Fraction(a) * Fraction(b)
            for a, b in zip(widest.tolist(), widest[::-1].tolist(), strict=True)
        ),
        Fraction(0),
    )
    assert exact_power_sums(np.array([]), 3) == [0, 0, 0]
    with pytest.raises(ValueError, match="finite"):
        exact_power_sums(np.array([1.0, math.inf]), 2)


def test_exact_moments_and_rounding_once() -> None:
    values = [1e16, 1.0, -1e16, 3.0, 2.0]
    x = np.array(values)
    mean, m2, m3, m4 = exact_moments(len(values), exact_power_sums(x, 4))
    exact_mean = sum((Fraction(v) for v in values), Fraction(0)) / 5
    assert mean == exact_mean
    assert m2 == sum(((Fraction(v) - exact_mean) ** 2 for v in values), Fraction(0))
    assert m3 == sum(((Fraction(v) - exact_mean) ** 3 for v in values), Fraction(0))
    assert m4 == sum(((Fraction(v) - exact_mean) ** 4 for v in values), Fraction(0))
    assert exact_to_float(mean) == 1.2  # float arithmetic gives 0.0 or 0.8 here
    assert exact_to_float(Fraction(10) ** 400) == math.inf
    assert exact_to_float(-(Fraction(10) ** 400)) == -math.inf
    with pytest.raises(ValueError, match="no records"):
        exact_moments(0, [Fraction(0)])
