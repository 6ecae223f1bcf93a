"""Encoding → masked sum → decoding keeps every digit, on the vectorised paths.

Property tests over random float64 values (subnormals, ±0, the largest and smallest exponents),
int64 values near ±2^63 and dyadic Fractions: each site's reply is flattened, encoded with the
spec the sites' announced ranges agree, masked with real pairwise masks, summed, and decoded;
the result is compared with exact ``Fraction`` arithmetic (no fedflow code in the reference).
Vectors are longer than 64 values (the vectorised range), 16 (the vectorised decoding) and, in
one test, than a mask block and an encoding chunk (2^14 values).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.apps.base import Exact, Payload
from fedflow.secure import EncodingError, FixedPoint, MaskLabel, PairwiseMasker, ring, sum_vectors
from fedflow.secure.layout import flatten, unflatten
from fedflow.secure.pairwise import BLOCK, mask_words


class Reply(Payload, frozen=True):
    n: int
    total: float
    exact: Exact
    values: np.ndarray
    counts: np.ndarray


def _maskers(n: int, threshold: int | None = None) -> list[PairwiseMasker]:
    sites = [PairwiseMasker(f"site{i:02d}") for i in range(n)]
    keys = {s.name: s.public_key for s in sites}
    session = secrets.token_bytes(16)
    for s in sites:
        s.agree(session, keys, threshold)
    return sites


def _masked_sum(replies: list[Reply], threshold: int | None = None) -> dict:
    """The one-exchange protocol in memory: flatten, agree the spec, encode, mask, sum, decode."""
    flats = [flatten(r) for r in replies]
    ranges = [f.range for f in flats if f.range is not None]
    n = len(replies)
    spec = FixedPoint.agree(ranges, n) if ranges else FixedPoint(0, 0, n)
    length = flats[0].length
    label = MaskLabel(1, 1, "sums", length, spec.limbs, spec.lsb, spec.msb, n)
    masked = [
        site.mask(label, flat.encode(spec))
        for site, flat in zip(_maskers(n, threshold), flats, strict=True)
    ]
    for vector, flat in zip(masked, flats, strict=True):
        assert not np.array_equal(vector, flat.encode(spec))  # each vector left masked
    return unflatten(flats[0].layout, spec, sum_vectors(masked))


def _rounded(x: Fraction) -> float:
    """The correctly rounded float64 of an exact rational (±inf beyond the range)."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _same(a: float, b: float) -> bool:
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b) or (a == b == 0.0)


TINY = 5e-324
floats64 = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, TINY, -TINY, 2.2250738585072014e-308, 1.7976931348623157e308]),
    st.floats(min_value=-1e-300, max_value=1e-300, allow_subnormal=True),
    st.floats(min_value=-(2.0**60), max_value=2.0**60),
)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(65, 80),
    st.data(),
)
def test_random_float64_sums_are_exact_through_masks(n: int, length: int, data) -> None:
    narrow = data.draw(st.booleans())  # narrow: 1–2 limbs (the float path); else any width
    element = st.floats(min_value=-(2.0**40), max_value=2.0**40, width=64) if narrow else floats64
    columns = data.draw(
        st.lists(st.lists(element, min_size=length, max_size=length), min_size=n, max_size=n)
    )
    replies = [
        Reply(n=0, total=0.0, exact=(), values=np.array(c), counts=np.zeros(1, np.int64))
        for c in columns
    ]
    got = _masked_sum(replies)["values"]
    for j in range(length):
        exact = sum((Fraction(c[j]) for c in columns), Fraction(0))
        assert got[j] == _rounded(exact), (j, [c[j] for c in columns])


ints63 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(2**63 - 2**12, 2**63 - 1),
    st.integers(-(2**63), -(2**63) + 2**12),
    st.integers(-1000, 1000),
)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 4), st.data())
def test_int64_arrays_near_the_limits_sum_exactly_or_are_refused(n: int, data) -> None:
    length = data.draw(st.integers(17, 40))
    with_float = data.draw(st.booleans())  # a float field makes lsb < 0 for the int64 field
    columns = data.draw(
        st.lists(st.lists(ints63, min_size=length, max_size=length), min_size=n, max_size=n)
    )
    replies = [
        Reply(
            n=i,
            total=2.0**-30 if with_float else 0.0,
            exact=(),
            values=np.zeros(1),
            counts=np.array(c, dtype=np.int64),
        )
        for i, c in enumerate(columns)
    ]
    sums = [sum(c[j] for c in columns) for j in range(length)]
    if all(-(2**63) <= s < 2**63 for s in sums):
        got = _masked_sum(replies)
        assert got["counts"].dtype == np.int64
        assert [int(v) for v in got["counts"]] == sums
        assert got["n"] == sum(range(n))
    else:
        with pytest.raises(EncodingError, match="field 'counts': the sum exceeds the int64 range"):
            _masked_sum(replies)


dyadic = st.builds(
    lambda num, k: Fraction(num) * Fraction(2) ** -k,
    st.integers(-(2**200), 2**200),
    st.integers(-300, 1100),
)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 4), st.data())
def test_exact_fractions_ints_and_floats_sum_exactly(n: int, data) -> None:
    exacts = data.draw(st.lists(st.lists(dyadic, min_size=3, max_size=3), min_size=n, max_size=n))
    ints = data.draw(st.lists(st.integers(-(2**100), 2**100), min_size=n, max_size=n))
    totals = data.draw(st.lists(floats64, min_size=n, max_size=n))
    replies = [
        Reply(n=i, total=t, exact=tuple(e), values=np.zeros(20), counts=np.zeros(20, np.int64))
        for i, t, e in zip(ints, totals, exacts, strict=True)
    ]
    got = _masked_sum(replies)
    assert got["exact"] == tuple(sum(column, Fraction(0)) for column in zip(*exacts, strict=True))
    assert got["n"] == sum(ints)
    assert got["total"] == _rounded(sum((Fraction(t) for t in totals), Fraction(0)))
    assert not got["values"].any() and not got["counts"].any()


@pytest.mark.parametrize("limbs", [1, 2, 3])
def test_long_vectors_cross_blocks_and_chunks_exactly(limbs: int) -> None:
    length = BLOCK + 300  # two mask blocks, two encoding chunks
    rng = np.random.default_rng(limbs)
    columns = [rng.standard_normal(length) for _ in range(3)]
    if limbs == 1:  # values on a grid of 2^-10: a narrow range
        columns = [np.round(c * 2**10) / 2**10 for c in columns]
    if limbs == 3:  # some values 2^60 times smaller: a wide range
        columns = [c * rng.choice([1.0, 2.0**-60], length) for c in columns]
    replies = [
        Reply(n=1, total=0.0, exact=(), values=c, counts=np.ones(2, np.int64)) for c in columns
    ]
    flats = [flatten(r) for r in replies]
    spec = FixedPoint.agree([f.range for f in flats if f.range is not None], 3)
    assert spec.limbs == limbs
    got = _masked_sum(replies)["values"]
    exact = [sum((Fraction(float(c[j])) for c in columns), Fraction(0)) for j in range(length)]
    assert got.tolist() == [float(x) for x in exact]


def test_a_mask_is_the_keystream_laid_out_block_by_block_lane_by_lane() -> None:
    a, b = _maskers(2)
    length, limbs = BLOCK + 5, 2
    label = MaskLabel(3, 1, "sums", length, limbs, -60, 60, 2)
    zero = ring.zeros(length, limbs)
    words = mask_words(a._pair["site01"], label)
    assert np.array_equal(a.mask(label, zero), words)  # a adds the mask of pair (a, b)
    assert ring.to_ints(b.mask(label, zero)) == ring.to_ints(ring.neg(words))  # b subtracts it
    # the keystream, built here from AES-256 block by block (ECB over the counter blocks
    # SHA-256(label)[:16] + i, big-endian, mod 2^128): CTR mode without using CTR mode
    start = int.from_bytes(hashlib.sha256(label.to_bytes()).digest()[:16], "big")
    nblocks = -(-length * limbs * 8 // 16)
    counters = b"".join(((start + i) % 2**128).to_bytes(16, "big") for i in range(nblocks))
    cipher = Cipher(algorithms.AES(a._pair["site01"]), modes.ECB()).encryptor()
    keystream = cipher.update(counters)[: length * limbs * 8]
    stream = np.frombuffer(keystream, dtype="<u8")
    assert np.array_equal(words[:BLOCK, 0], stream[:BLOCK])  # block 0: limb 0, then limb 1
    assert np.array_equal(words[:BLOCK, 1], stream[BLOCK : 2 * BLOCK])
    assert np.array_equal(words[BLOCK:, 0], stream[2 * BLOCK : 2 * BLOCK + 5])  # block 1
    assert np.array_equal(words[BLOCK:, 1], stream[2 * BLOCK + 5 :])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(3, 5),
    st.lists(st.integers(-(2**300), 2**300), min_size=17, max_size=40),
    st.integers(-1200, 900),
)
def test_wide_ring_decoding_rounds_like_fractions(limbs: int, ints: list[int], lsb: int) -> None:
    spec = FixedPoint(lsb, lsb + 64 * limbs - 2, 1)
    assert spec.limbs == limbs
    top = 2 ** (64 * limbs - 1)
    ints = [v % (2 * top) - top for v in ints] + [-top, top - 1, 0]  # the ring's extremes too
    got = spec.decode_float(ring.from_ints(ints, limbs))
    for value, v in zip(got, ints, strict=True):
        assert value == _rounded(Fraction(v) * Fraction(2) ** lsb), (v, lsb)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(ints63, min_size=17, max_size=30),
    st.integers(-130, 70),
    st.integers(0, 130),
)
def test_int64_encoding_matches_the_exact_one(values: list[int], lsb: int, span: int) -> None:
    from fedflow.secure.layout import _encode_int64

    spec = FixedPoint(lsb, lsb + span, 4)
    array = np.array(values, dtype=np.int64)
    try:
        want = ring.to_ints(spec.encode([int(v) for v in values]))  # the Python (exact) path
    except EncodingError as exc:
        with pytest.raises(EncodingError) as caught:
            _encode_int64(spec, array)
        assert str(caught.value) == str(exc)  # the same value named, for the same reason
        return
    assert ring.to_ints(_encode_int64(spec, array)) == want


def test_a_float_field_whose_sum_overflows_is_infinite_like_a_float64_array() -> None:
    big = 1.7976931348623157e308
    replies = [
        Reply(
            n=1, total=s * big, exact=(), values=np.full(20, s * big), counts=np.zeros(1, np.int64)
        )
        for s in (1.0, 1.0)
    ]
    got = _masked_sum(replies)
    assert got["total"] == math.inf
    assert (got["values"] == math.inf).all()
    replies = [Reply(**{**_fields(r), "total": -big}) for r in replies]
    assert _masked_sum(replies)["total"] == -math.inf


def _fields(reply: Reply) -> dict:
    return {name: getattr(reply, name) for name in reply.__struct_fields__}
