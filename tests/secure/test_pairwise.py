"""Pairwise masks under keys agreed once per run (the one-exchange protocol), in memory."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from fedflow.secure import MaskLabel, PairwiseMasker, SecureAggregationError, ring, sum_vectors


def _run(n: int) -> dict[str, PairwiseMasker]:
    names = [f"site{i:02d}" for i in range(n)]
    sites = {name: PairwiseMasker(name) for name in names}
    keys = {name: site.public_key for name, site in sites.items()}
    session = secrets.token_bytes(16)
    for site in sites.values():
        site.agree(session, keys)
    return sites


def _label(counter: int, length: int, limbs: int = 1, phase: str = "sums") -> MaskLabel:
    return MaskLabel(counter, counter, phase, length, limbs, -60, 60, 8)


def _inputs(n: int, length: int, limbs: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    bits = 64 * limbs - 8
    return [
        [int.from_bytes(rng.bytes(bits // 8), "little") - (1 << (bits - 1)) for _ in range(length)]
        for _ in range(n)
    ]


@pytest.mark.parametrize(("n", "limbs"), [(2, 1), (3, 2), (7, 1), (5, 3)])
def test_the_masks_cancel_in_the_sum_over_every_site(n: int, limbs: int) -> None:
    sites = _run(n)
    length = 50
    inputs = _inputs(n, length, limbs, seed=n * 10 + limbs)
    for counter in (1, 2):  # fresh masks per sum, still cancelling
        masked = [
            site.mask(_label(counter, length, limbs), ring.from_ints(values, limbs))
            for site, values in zip(sites.values(), inputs, strict=True)
        ]
        modulus = 1 << (64 * limbs)
        expected = [sum(column) % modulus for column in zip(*inputs, strict=True)]  # Python ints
        assert ring.to_ints(sum_vectors(masked), signed=False) == expected
        for vector, values in zip(masked, inputs, strict=True):  # each vector is masked
            assert ring.to_ints(vector) != values


def test_without_one_sites_vector_the_sum_stays_masked() -> None:
    sites = _run(4)
    length = 20
    inputs = _inputs(4, length, 1, seed=1)
    masked = [
        s.mask(_label(1, length), ring.from_ints(v, 1))
        for s, v in zip(sites.values(), inputs, strict=True)
    ]
    partial = ring.to_ints(sum_vectors(masked[:3]), signed=False)
    truth = [sum(c) % 2**64 for c in zip(*inputs[:3], strict=True)]
    assert all(a != b for a, b in zip(partial, truth, strict=True))


def test_the_masks_depend_on_the_counter_and_on_what_the_sum_is() -> None:
    sites = _run(2)
    a = sites["site00"]
    zero = ring.zeros(8, 1)
    first = a.mask(_label(1, 8), zero)
    second = a.mask(_label(2, 8), zero)
    other_phase = a.mask(_label(3, 8, phase="other"), zero)
    rows = {tuple(v.ravel().tolist()) for v in (first, second, other_phase)}
    assert len(rows) == 3


def test_a_replayed_or_repeated_counter_is_refused() -> None:
    site = _run(3)["site01"]
    site.mask(_label(5, 4), ring.zeros(4, 1))
    for counter in (5, 4):
        with pytest.raises(SecureAggregationError, match="replayed or out of order") as caught:
            site.mask(_label(counter, 4), ring.zeros(4, 1))
        assert caught.value.site == "site01"


def test_keys_are_agreed_once_and_a_changed_peer_set_is_refused() -> None:
    sites = _run(3)
    a = sites["site00"]
    session = a.session
    assert session is not None
    a.agree(session, a.keys)  # the same keys again: accepted
    changed = dict(a.keys)
    changed["site02"] = PairwiseMasker("site02").public_key
    with pytest.raises(SecureAggregationError, match="another session or peer set"):
        a.agree(session, changed)
    fewer = {k: v for k, v in a.keys.items() if k != "site02"}
    with pytest.raises(SecureAggregationError, match="another session or peer set"):
        a.agree(session, fewer)
    with pytest.raises(SecureAggregationError, match="another session or peer set"):
        a.agree(secrets.token_bytes(16), a.keys)


def test_bad_keys_are_refused_naming_the_site() -> None:
    a, b = PairwiseMasker("a"), PairwiseMasker("b")
    session = secrets.token_bytes(16)
    with pytest.raises(SecureAggregationError, match="own public key came back altered"):
        PairwiseMasker("a").agree(session, {"a": b.public_key, "b": b.public_key})
    with pytest.raises(SecureAggregationError, match="at least two sites"):
        a.agree(session, {"a": a.public_key})
    with pytest.raises(SecureAggregationError, match="of 31 bytes") as caught:
        a.agree(session, {"a": a.public_key, "b": b.public_key[:31]})
    assert caught.value.site == "b"
    with pytest.raises(SecureAggregationError, match="agrees no secret") as caught:
        a.agree(session, {"a": a.public_key, "b": bytes(32)})  # a low-order point
    assert caught.value.site == "b"
    assert not a.agreed
    with pytest.raises(SecureAggregationError, match="before the keys were agreed"):
        a.mask(_label(1, 2), ring.zeros(2, 1))


@pytest.mark.parametrize(
    ("lsb", "msb", "terms"), [(-75, 3, 10), (0, 12, 3), (-2148, 2048, 50), (-4400, 0, 7), (5, 5, 2)]
)
def test_a_proposal_holds_the_range_in_the_same_ring_and_within_what_sites_accept(
    lsb: int, msb: int, terms: int
) -> None:
    from fedflow.runtime.secure import first_proposal, propose
    from fedflow.secure import FixedPoint
    from fedflow.secure.layout import MAX_BITS

    spec = FixedPoint(lsb, msb, terms)
    wider = propose(spec)
    assert wider.lsb <= lsb and msb <= wider.msb and wider.terms == terms
    assert wider.limbs == spec.limbs and wider.msb - wider.lsb <= MAX_BITS
    first = first_proposal(terms)
    assert first.limbs == 2 and first.msb == 40
