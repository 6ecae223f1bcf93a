"""The coordinator's side of one secure round: a summed phase as four exchanges.

With ``secure = true`` the round driver turns each round of a summed phase into a
``SecureRound``; it yields the requests of each step and is fed the sites' answers, in the one
round loop (``Driver.tasks`` / ``Driver.feed``)::

    1  SecureTask  → SecureKeys    each site computes local_<phase>, keeps the reply, announces
                                   its keys, the reply's layout and its values' exponent range
    2  RelayKeys   → SecureShares  every site's keys and the agreed FixedPoint(lsb, msb, terms)
    3  RelayShares → SecureMasked  the sealed shares for that site; it answers its reply masked
    4  Unmask      → SecureReveal  the coordinator removes the masks, decodes the exact sum and
                                   un-flattens it into the phase's reply type

The coordinator never holds one site's reply: only public keys, sealed boxes, masked vectors,
the shares that unmask the sum, and the sum. The layout (field names and shapes) and the
exponent ranges are public; a site whose layout differs from the first site's is a
RemoteProtocolError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from fedflow.apps.base import Payload, decode_payload, encode_payload
from fedflow.errors import RemoteProtocolError
from fedflow.secure import (
    CoordinatorAggregation,
    FixedPoint,
    Keys,
    Masked,
    Reveal,
    Session,
    Shares,
)
from fedflow.secure.layout import MAX_BITS, Field, check_layout, unflatten
from fedflow.wire import (
    LayoutField,
    Message,
    PublicKeys,
    RelayKeys,
    RelayShares,
    SecureKeys,
    SecureMasked,
    SecureReveal,
    SecureShares,
    SecureTask,
    Unmask,
)

__all__ = ["SecureRound", "majority", "to_fields"]

_ANSWERS: tuple[type[Message], ...] = (SecureKeys, SecureShares, SecureMasked, SecureReveal)


def majority(n: int) -> int:
    """The default threshold: a majority of ``n`` sites (⌊n/2⌋ + 1)."""
    return n // 2 + 1


def to_fields(layout: list[LayoutField]) -> tuple[Field, ...]:
    """Return a layout as announced on the wire as ``fedflow.secure.layout`` fields."""
    return tuple(Field(f.name, f.kind, tuple(f.shape)) for f in layout)


class SecureRound:
    """One round of a summed phase under secure aggregation, at the coordinator.

    ``payloads``: the encoded request per site; ``sites``: every site, in study order.
    ``dropout``: a site that stops answering leaves the sum, which is then over the sites that
    sent a masked vector; one that shared its keys first is unmasked with the survivors' shares
    (training; at least ``threshold`` must remain). Without it (analytics) every site must
    answer every step: the sum must be the pooled one.
    """

    def __init__(
        self,
        session_id: bytes,
        round_: int,
        phase: str,
        reply: type[Payload],
        payloads: Mapping[str, dict[str, Any]],
        sites: list[str],
        threshold: int,
        *,
        dropout: bool = False,
    ) -> None:
        self.session_id = session_id
        self.round = round_
        self.phase = phase
        self.reply = reply
        self.payloads = dict(payloads)
        self.sites = list(sites)
        self.threshold = threshold
        self.dropout = dropout
        self.step = 0
        """0..3: the step whose requests go out next; 4 when the sum is known."""
        self.active = list(sites)
        """The sites still taking part (all of them unless ``dropout``)."""
        self.layout: tuple[Field, ...] = ()
        self.spec: FixedPoint | None = None
        self.aggregation: CoordinatorAggregation | None = None
        self.result: Payload | None = None
        """The sum over sites, as the phase's reply type (when ``done``)."""
        self._relay: dict[str, dict[str, bytes]] = {}

    @property
    def done(self) -> bool:
        """Whether the sum is known."""
        return self.step == 4

    @property
    def expect(self) -> type[Message]:
        """The answer type of the step in flight."""
        return _ANSWERS[self.step]

    def requests(self) -> dict[str, Message]:
        """Return the next step's message for every site still taking part."""
        r = self.round
        if self.step == 0:
            return {
                n: SecureTask(
                    round=r,
                    phase=self.phase,
                    payload=self.payloads[n],
                    session=self.session_id,
                    sites=list(self.sites),
                    threshold=self.threshold,
                )
                for n in self.active
            }
        agg = self.aggregation
        assert agg is not None and self.spec is not None
        if self.step == 1:
            keys = {
                k.site: PublicKeys(cipher_pk=k.cipher_pk, mask_pk=k.mask_pk)
                for k in agg.relay_keys().values()
            }
            spec = self.spec
            return {
                n: RelayKeys(round=r, keys=keys, lsb=spec.lsb, msb=spec.msb, terms=spec.terms)
                for n in self.active
            }
        if self.step == 2:
            self._relay = agg.relay_shares()
            return {n: RelayShares(round=r, boxes=self._relay.get(n, {})) for n in self.active}
        if self.step == 3:
            request = agg.unmask_request()
            return {
                n: Unmask(round=r, survivors=list(request.survivors), dropped=list(request.dropped))
                for n in request.survivors
            }
        raise AssertionError("the secure round is over")

    def feed(self, replies: Mapping[str, Message]) -> None:
        """Take the sites' answers to the step in flight (site name → answer)."""
        expect = self.expect
        answered = [n for n in self.active if n in replies]
        missing = [n for n in self.active if n not in replies]
        if missing and not self.dropout:
            raise RemoteProtocolError(
                f"no {expect.__name__} in secure round {self.round}", site=missing[0]
            )
        for name in answered:
            reply = replies[name]
            if not isinstance(reply, expect):
                raise RemoteProtocolError(
                    f"expected {expect.__name__}, got {type(reply).__name__}", site=name
                )
            if getattr(reply, "round", None) != self.round:
                raise RemoteProtocolError(
                    f"answered round {getattr(reply, 'round', None)} during secure round "
                    f"{self.round}",
                    site=name,
                )
        self.active = answered
        getattr(self, f"_feed_{self.step}")({n: replies[n] for n in answered})
        self.step += 1

    # -- the steps -----------------------------------------------------------------------------
    def _feed_0(self, replies: Mapping[str, SecureKeys]) -> None:
        first: tuple[str, tuple[Field, ...]] | None = None
        ranges = []
        for name, answer in replies.items():
            layout = to_fields(answer.layout)
            try:
                check_layout(layout)
            except ValueError as exc:
                raise RemoteProtocolError(
                    f"announced a malformed layout for phase '{self.phase}': {exc}", site=name
                ) from None
            if first is None:
                first = (name, layout)
            elif layout != first[1]:
                raise RemoteProtocolError(
                    f"its reply to phase '{self.phase}' has layout {_show(layout)}, but site "
                    f"'{first[0]}' announced {_show(first[1])}: every site must send the same "
                    "fields and shapes",
                    site=name,
                )
            if (answer.lsb is None) != (answer.msb is None):
                raise RemoteProtocolError("announced half an exponent range", site=name)
            if answer.lsb is not None and answer.msb is not None:
                if not (answer.lsb <= answer.msb and answer.msb - answer.lsb <= MAX_BITS):
                    raise RemoteProtocolError(
                        f"announced the exponent range ({answer.lsb}, {answer.msb}), beyond "
                        f"{MAX_BITS} bits",
                        site=name,
                    )
                ranges.append((answer.lsb, answer.msb))
        assert first is not None
        self.layout = first[1]
        self._check_reply_type(first[0])
        terms = len(self.sites)
        spec = FixedPoint.agree(ranges, terms) if ranges else FixedPoint(0, 0, terms)
        if spec.msb - spec.lsb > MAX_BITS:
            raise RemoteProtocolError(
                f"the sites' exponent ranges span {spec.msb - spec.lsb} bits (from 2^{spec.lsb} "
                f"to 2^{spec.msb}), beyond {MAX_BITS}: the values of phase '{self.phase}' "
                "differ too widely in magnitude to be summed exactly"
            )
        self.spec = spec
        length = sum(f.size for f in self.layout)
        session = Session(
            self.session_id, self.round, tuple(self.sites), length, spec.limbs, self.threshold
        )
        self.aggregation = CoordinatorAggregation(session)
        for name, answer in replies.items():
            self.aggregation.receive_keys(Keys(name, answer.keys.cipher_pk, answer.keys.mask_pk))

    def _check_reply_type(self, site: str) -> None:
        names = tuple(f.name for f in self.layout)
        if names != tuple(self.reply.__struct_fields__):
            raise RemoteProtocolError(
                f"announced fields {', '.join(names)} for phase '{self.phase}', whose reply "
                f"{self.reply.__name__} has {', '.join(self.reply.__struct_fields__)}",
                site=site,
            )

    def _feed_1(self, replies: Mapping[str, SecureShares]) -> None:
        assert self.aggregation is not None
        for name, answer in replies.items():
            self.aggregation.receive_shares(Shares(name, dict(answer.boxes), answer.commitment))

    def _feed_2(self, replies: Mapping[str, SecureMasked]) -> None:
        assert self.aggregation is not None
        for name, answer in replies.items():
            if not isinstance(answer.vector, np.ndarray):
                raise RemoteProtocolError("sent a masked vector that is not an array", site=name)
            self.aggregation.receive_masked(Masked(name, answer.vector))

    def _feed_3(self, replies: Mapping[str, SecureReveal]) -> None:
        agg = self.aggregation
        assert agg is not None and self.spec is not None
        for name, answer in replies.items():
            agg.receive_reveal(Reveal(name, dict(answer.self_seeds), dict(answer.mask_keys)))
        total = agg.result()
        fields = unflatten(self.layout, self.spec, total)
        try:
            self.result = decode_payload(encode_payload(self.reply(**fields)), self.reply)
        except (msgspec.ValidationError, TypeError) as exc:
            raise RemoteProtocolError(
                f"the sum the sites sent for phase '{self.phase}' does not fit its reply "
                f"{self.reply.__name__}: {exc}",
                site=self.sites[0],
            ) from None


def _show(layout: tuple[Field, ...]) -> str:
    return ", ".join(
        f"{f.name}: {f.kind}" + (f"{list(f.shape)}" if f.shape else "") for f in layout
    )
