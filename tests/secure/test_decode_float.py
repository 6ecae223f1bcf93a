"""The vectorised decoding of one- and two-limb rings rounds exactly like Python's exact path
(float(Fraction)): ties to even, subnormal results and overflow included."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.secure import FixedPoint, ring


def _halfway(draw_bits: int, mantissa: int, low: int) -> int:
    # 53 significant bits, then exactly one half-unit (a tie) or a tie plus a sticky bit
    return ((mantissa | (1 << 52)) << (draw_bits - 53)) | (1 << (draw_bits - 54)) | low


values = st.one_of(
    st.integers(-(2**127), 2**127 - 1),
    st.integers(-(2**60), 2**60),
    st.builds(_halfway, st.integers(60, 120), st.integers(0, 2**52 - 1), st.sampled_from([0, 1])),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(values, min_size=65, max_size=120),
    st.sampled_from([-1100, -1074, -1040, -200, -70, 0, 40, 900]),
)
def test_wide_decoding_equals_the_exact_rounding(ints, lsb) -> None:
    vector = ring.from_ints(ints, 2)
    spec = FixedPoint(lsb, lsb + 126, 1)
    fast = spec.decode_float(vector)  # > 64 values of 2 limbs: the vectorised path
    for got, v in zip(fast, ints, strict=True):
        try:
            want = float(Fraction(v) * Fraction(2) ** lsb)
        except OverflowError:
            want = np.inf if v > 0 else -np.inf
        assert got == want, (v, lsb)


def test_one_limb_rings_too() -> None:
    ints = [0, 1, -1, 2**62, -(2**63), 2**53 + 1, -(2**54 + 3), *range(-40, 40)]
    fast = FixedPoint(-60, 2, 1).decode_float(ring.from_ints(ints, 1))
    assert list(fast) == [float(Fraction(v, 2**60)) for v in ints]
