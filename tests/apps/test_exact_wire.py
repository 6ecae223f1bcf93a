"""``Exact`` reply fields in the clear: dyadic rationals as "n/d" text, anything else refused."""

from __future__ import annotations

from fractions import Fraction

import msgspec
import pytest

from fedflow.apps.base import Exact, Payload, decode_payload, encode_payload, sum_replies


class Sums(Payload, frozen=True):
    n: int
    exact: Exact


def test_exact_values_cross_the_wire_unchanged() -> None:
    reply = Sums(n=3, exact=(Fraction(-5, 4), Fraction(2**80 + 1), Fraction(3, 2**1100)))
    raw = encode_payload(reply)
    assert raw["exact"] == ("-5/4", str(2**80 + 1), f"3/{2**1100}")
    assert decode_payload(raw, Sums) == reply


@pytest.mark.parametrize(
    "cell",
    ["1/3", "1/0", "x", "1/4.5", True, 0.25, "1" * 5000],
    ids=["not-dyadic", "zero-denominator", "text", "decimal-denominator", "bool", "float", "long"],
)
def test_anything_but_a_dyadic_rational_is_refused(cell: object) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_payload({"n": 1, "exact": [cell]}, Sums)


def test_sum_replies_is_exact_and_rounds_floats_once() -> None:
    class Mixed(Payload, frozen=True):
        n: int
        x: float
        exact: Exact

    total = sum_replies(
        {
            "a": Mixed(n=1, x=1e16, exact=(Fraction(1, 4),)),
            "b": Mixed(n=2, x=1.0, exact=(Fraction(1, 8),)),
            "c": Mixed(n=4, x=1.0, exact=(Fraction(-1, 2),)),
        },
        Mixed,
    )
    assert total.n == 7
    assert total.x == 1e16 + 2  # float addition in any order gives 1e16 (each 1.0 rounds away)
    assert total.exact == (Fraction(-1, 8),)
