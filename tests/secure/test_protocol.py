"""The secure-aggregation protocol, all parties joined in memory (no processes, no sockets)."""

from __future__ import annotations

import dataclasses
import secrets
from fractions import Fraction

import numpy as np
import pytest

from fedflow.secure import (
    CoordinatorAggregation,
    FixedPoint,
    SecureAggregationError,
    Session,
    ShareError,
    SiteAggregation,
    Unmask,
    exponent_range,
    ring,
)


def _setup(n: int, length: int, limbs: int = 1, round_: int = 1, threshold: int = 0):
    names = tuple(f"site{i:02d}" for i in range(n))
    session = Session(secrets.token_bytes(16), round_, names, length, limbs, threshold)
    sites = {name: SiteAggregation(session, name) for name in names}
    coordinator = CoordinatorAggregation(session)
    for site in sites.values():
        coordinator.receive_keys(site.advertise())
    keys = coordinator.relay_keys()
    for site in sites.values():
        coordinator.receive_shares(site.share(keys))
    return session, sites, coordinator, coordinator.relay_shares()


def _finish(coordinator: CoordinatorAggregation, sites: dict) -> np.ndarray:
    request = coordinator.unmask_request()
    for name in request.survivors:
        coordinator.receive_reveal(sites[name].reveal(request))
    return coordinator.result()


@pytest.mark.parametrize("n", [3, 7, 20])
def test_masks_cancel_exactly(n: int) -> None:
    rng = np.random.default_rng(n)
    values = {f"site{i:02d}": rng.normal(size=50) * 10.0 ** rng.integers(-5, 5) for i in range(n)}
    spec = FixedPoint.agree((exponent_range(v) for v in values.values()), terms=n)
    _, sites, coordinator, boxes = _setup(n, 50, spec.limbs)
    for name, site in sites.items():
        masked = site.mask(boxes[name], spec.encode(values[name]))
        # what the coordinator receives is not the site's input
        assert not np.array_equal(masked.vector, spec.encode(values[name]))
        coordinator.receive_masked(masked)
    total = spec.decode(_finish(coordinator, sites))
    expected = [sum(Fraction(float(v[j])) for v in values.values()) for j in range(50)]
    assert total == expected


def test_a_site_that_drops_after_masking_is_unmasked_by_the_survivors() -> None:
    n = 7
    _, sites, coordinator, boxes = _setup(n, 5, limbs=2)
    inputs = {name: ring.from_ints([i, -i, 2**100, i * i, 0], 2) for i, name in enumerate(sites)}
    dropped = {"site02", "site05"}
    for name, site in sites.items():
        masked = site.mask(boxes[name], inputs[name])
        if name not in dropped:  # site02 and site05 shared their keys, then fell silent
            coordinator.receive_masked(masked)
    request = coordinator.unmask_request()
    assert set(request.dropped) == dropped and len(request.survivors) == 5
    survivors = [i for i, name in enumerate(sites) if name not in dropped]
    assert ring.to_ints(_finish(coordinator, sites)) == [
        sum(survivors),
        -sum(survivors),
        5 * 2**100,
        sum(i * i for i in survivors),
        0,
    ]


def test_too_few_survivors_cannot_unmask() -> None:
    _, sites, coordinator, boxes = _setup(5, 3)  # threshold 3
    for name in ("site00", "site01"):
        coordinator.receive_masked(sites[name].mask(boxes[name], ring.zeros(3, 1)))
    with pytest.raises(SecureAggregationError, match="needs 3 sites; only 2"):
        coordinator.unmask_request()


def test_a_corrupted_share_fails_naming_its_sender() -> None:
    _, sites, _, boxes = _setup(3, 4)
    box = bytearray(boxes["site01"]["site00"])
    box[40] ^= 1
    with pytest.raises(
        ShareError, match="site 'site00': its share for 'site01' does not open"
    ) as exc:
        sites["site01"].mask({**boxes["site01"], "site00": bytes(box)}, ring.zeros(4, 1))
    assert exc.value.site == "site00"


def test_a_share_relayed_under_another_senders_name_fails_naming_that_sender() -> None:
    _, sites, _, boxes = _setup(3, 4)
    swapped = {"site00": boxes["site01"]["site02"], "site02": boxes["site01"]["site00"]}
    with pytest.raises(ShareError) as exc:
        sites["site01"].mask(swapped, ring.zeros(4, 1))
    assert exc.value.site in {"site00", "site02"} and "does not open" in str(exc.value)


def test_a_share_replayed_from_another_round_fails() -> None:
    """Same keys, same sites, round 2: a box sealed in round 1 does not open in round 2."""
    session, sites, coordinator, boxes = _setup(3, 4, round_=1)
    later = dataclasses.replace(session, round=2)
    # round-2 parties that happen to hold the very same key pairs as in round 1
    clones = {name: dataclasses.replace(site, session=later) for name, site in sites.items()}
    with pytest.raises(ShareError, match="site 'site00'.*replayed from another round") as exc:
        clones["site02"].mask(boxes["site02"], ring.zeros(4, 1))
    assert exc.value.site == "site00"
    # and the same boxes in their own round open fine
    sites["site02"].mask(boxes["site02"], ring.zeros(4, 1))


def test_steps_out_of_order_and_double_reveals_are_refused() -> None:
    _, sites, coordinator, boxes = _setup(3, 2)
    with pytest.raises(SecureAggregationError, match="'reveal' out of order"):
        sites["site00"].reveal(Unmask(("site00",), ()))
    for name, site in sites.items():
        coordinator.receive_masked(site.mask(boxes[name], ring.zeros(2, 1)))
    with pytest.raises(SecureAggregationError, match="both secrets of site01"):
        sites["site00"].reveal(Unmask(("site00", "site01", "site02"), ("site01",)))


def test_a_wrong_revealed_share_is_caught_by_the_commitment() -> None:
    _, sites, coordinator, boxes = _setup(3, 2, threshold=2)
    for name, site in sites.items():
        coordinator.receive_masked(site.mask(boxes[name], ring.zeros(2, 1)))
    request = coordinator.unmask_request()
    for name in request.survivors:
        reveal = sites[name].reveal(request)
        if name == "site01":
            raw = bytearray(reveal.self_seeds["site02"])
            raw[-1] ^= 1
            reveal = dataclasses.replace(
                reveal, self_seeds={**reveal.self_seeds, "site02": bytes(raw)}
            )
        coordinator.receive_reveal(reveal)
    with pytest.raises(SecureAggregationError, match="site 'site02'"):
        coordinator.result()
