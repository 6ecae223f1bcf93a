"""Shamir sharing over GF(2^521 − 1) and ring arithmetic in Z/2^(64·limbs)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.secure import ring, shamir


@st.composite
def sharings(draw: st.DrawFn) -> tuple[int, int, int, list[int]]:
    n = draw(st.integers(2, 12))
    t = draw(st.integers(1, n))
    secret = draw(st.integers(0, (1 << 256) - 1))
    order = draw(st.permutations(range(n)))
    return secret, n, t, list(order)


@settings(max_examples=60, deadline=None)
@given(sharings())
def test_any_t_shares_recover_the_secret_and_t_minus_1_do_not(case: tuple) -> None:
    secret, n, t, order = case
    shares = shamir.split(secret, n, t)
    chosen = [shares[i] for i in order]
    assert shamir.combine(chosen[:t], t) == secret
    assert shamir.combine(chosen, t) == secret  # more than t: still the secret
    if t > 1:
        with pytest.raises(ValueError, match=f"need {t} distinct shares"):
            shamir.combine(chosen[: t - 1], t)
        # t − 1 points interpolated as if they were enough give a value unrelated to the secret
        assert shamir.combine(chosen[: t - 1], t - 1) != secret


def _at(points: list[tuple[int, int]], x: int) -> int:
    """Lagrange interpolation of ``points`` evaluated at ``x`` (mod the prime)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num, den = num * (x - xj) % shamir.PRIME, den * (xi - xj) % shamir.PRIME
        total = (total + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
    return total


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.data())
def test_t_minus_1_shares_are_consistent_with_every_secret(t: int, data: st.DataObject) -> None:
    """Hiding: for any other candidate secret there is a full set of t shares that contains the
    t − 1 real ones and recovers the candidate, so t − 1 shares cannot tell candidates apart."""
    secret, other = data.draw(st.integers(0, 2**256)), data.draw(st.integers(0, 2**256))
    n = t + 2
    shares = shamir.split(secret, n, t)[: t - 1]
    forged_y = _at([(0, other)] + [(s.x, s.y) for s in shares], n)
    assert shamir.combine(shares + [shamir.Share(n, forged_y)], t) == other
    real_y = _at([(0, secret)] + [(s.x, s.y) for s in shares], n)
    assert shamir.combine(shares + [shamir.Share(n, real_y)], t) == secret


def test_shares_round_trip_and_bad_input_is_refused() -> None:
    share = shamir.split(7, 3, 2)[1]
    assert shamir.Share.from_bytes(share.to_bytes()) == share
    with pytest.raises(ValueError):
        shamir.Share.from_bytes(b"\x00" * 10)
    with pytest.raises(ValueError):
        shamir.split(1 << 512, 3, 2)
    with pytest.raises(ValueError):
        shamir.split(1, 3, 4)
    with pytest.raises(ValueError, match="two different shares"):
        shamir.combine([shamir.Share(1, 2), shamir.Share(1, 3)], 1)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(
        st.tuples(st.integers(-(2**300), 2**300), st.integers(-(2**300), 2**300)), max_size=20
    ),
)
def test_ring_add_sub_neg_agree_with_python_ints(limbs: int, pairs: list) -> None:
    modulus = 1 << (64 * limbs)
    a = ring.from_ints([p[0] for p in pairs], limbs)
    b = ring.from_ints([p[1] for p in pairs], limbs)
    unsigned = [v % modulus for v in ring.to_ints(ring.add(a, b), signed=False)]
    assert unsigned == [(x + y) % modulus for x, y in pairs]
    assert ring.to_ints(ring.sub(a, b), signed=False) == [(x - y) % modulus for x, y in pairs]
    assert ring.to_ints(ring.neg(a), signed=False) == [(-x) % modulus for x, _ in pairs]


def test_carries_run_through_every_limb() -> None:
    top = ring.from_ints([-1], 4)  # all ones
    assert ring.to_ints(ring.add(top, ring.from_ints([1], 4))) == [0]
    assert ring.to_ints(ring.add(ring.from_ints([2**192 - 1], 4), ring.from_ints([1], 4))) == [
        2**192
    ]


def test_expand_is_deterministic_per_seed_and_looks_uniform() -> None:
    seed = random.Random(1).randbytes(32)
    a, b = ring.expand(seed, 1000, 2), ring.expand(seed, 1000, 2)
    assert np.array_equal(a, b) and a.shape == (1000, 2) and a.dtype == np.uint64
    assert not np.array_equal(a, ring.expand(bytes(32), 1000, 2))
    ones = np.unpackbits(a.view(np.uint8)).mean()
    assert 0.48 < ones < 0.52


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.lists(st.tuples(st.booleans(), st.integers(0, 2**192 - 1)), min_size=1, max_size=40),
)
def test_the_accumulator_equals_python_integer_sums(limbs: int, terms: list) -> None:
    modulus = 1 << (64 * limbs)
    length = 3
    acc = ring.Accumulator(length, limbs)
    expected = [0] * length
    for k, (negative, value) in enumerate(terms):
        values = [(value * (i + 1) + k) % modulus for i in range(length)]
        vector = ring.from_ints(values, limbs)
        raw = vector.tobytes() if k % 2 else vector  # as a keystream's bytes, or an array
        acc.sub(raw) if negative else acc.add(raw)
        expected = [
            (e - v if negative else e + v) % modulus for e, v in zip(expected, values, strict=True)
        ]
    assert ring.to_ints(acc.result(), signed=False) == expected
    # all-ones words: a carry out of every limb on every addition
    top = ring.from_ints([modulus - 1] * length, limbs)
    assert ring.to_ints(ring.total([top] * 5), signed=False) == [(5 * (modulus - 1)) % modulus] * 3
