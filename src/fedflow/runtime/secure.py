"""The coordinator's side of secure aggregation: a summed phase as one exchange, or four.

Without dropout recovery (analytics: a dropped site ends the run) a round is a ``MaskedRound``:
each site's public key for the run came in its ``Prepared`` answer and goes to every site with
its first request (``MaskedRun``); then per round::

    MaskedTask → MaskedSum   each site computes local_<phase>, keeps the reply, and answers its
                             layout, its values' exponent range and the reply encoded with the
                             proposed FixedPoint and masked with pairwise masks (a fresh
                             counter per exchange); the masks cancel in the sum

A site whose values the proposed encoding does not hold answers no vector, and the round takes
a second exchange with the encoding all ranges fit (the proposal for the next round of that
phase keeps a margin around every range seen).

With dropout recovery (training) a round is a ``SecureRound``, four exchanges::

    1  SecureTask  → SecureKeys    each site computes local_<phase>, keeps the reply, announces
                                   its keys, the reply's layout and its values' exponent range
    2  RelayKeys   → SecureShares  every site's keys and the agreed FixedPoint(lsb, msb, terms)
    3  RelayShares → SecureMasked  the sealed shares for that site; it answers its reply masked
    4  Unmask      → SecureReveal  the coordinator removes the masks, decodes the exact sum and
                                   un-flattens it into the phase's reply type

Either way the coordinator never holds one site's reply: only public keys, sealed boxes, masked
vectors, the shares that unmask the sum, and the sum. The layout (field names and shapes) and
the exponent ranges are public; a site whose layout differs from the first site's is a
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
    sum_vectors,
)
from fedflow.secure.layout import MAX_BITS, Field, check_layout, unflatten
from fedflow.wire import (
    LayoutField,
    MaskedSum,
    MaskedTask,
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

__all__ = [
    "MaskedRound",
    "MaskedRun",
    "SecureRound",
    "agree_layout",
    "decode_sum",
    "majority",
    "first_proposal",
    "propose",
    "to_fields",
]

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
        self.layout, ranges = agree_layout(self.phase, self.reply, replies)
        terms = len(self.sites)
        spec = _agree(self.phase, ranges, terms)
        self.spec = spec
        length = sum(f.size for f in self.layout)
        session = Session(
            self.session_id, self.round, tuple(self.sites), length, spec.limbs, self.threshold
        )
        self.aggregation = CoordinatorAggregation(session)
        for name, answer in replies.items():
            self.aggregation.receive_keys(Keys(name, answer.keys.cipher_pk, answer.keys.mask_pk))

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
        self.result = decode_sum(
            self.phase, self.reply, self.layout, self.spec, agg.result(), self.sites[0]
        )


def propose(spec: FixedPoint) -> FixedPoint:
    """Return an encoding that holds ``spec``'s range with the spare bits of its ring spent on
    margins (up to 8 bits above, the rest below; never wider than ``MAX_BITS``, which sites
    refuse), so that the next round of the phase, whose values differ, most likely still fits
    without a wider ring."""
    spare = min(64 * spec.limbs - spec.bits, MAX_BITS - (spec.msb - spec.lsb))
    above = min(8, spare // 4)
    return FixedPoint(spec.lsb - (spare - above), spec.msb + above, spec.terms)


def first_proposal(terms: int) -> FixedPoint:
    """The encoding proposed for a phase's first round (nothing known yet): a 128-bit ring from
    2^40 down to the finest bits it has room for (about 2^−80): counts and moderate sums of
    float data fit; anything else costs a second exchange with the range it needs."""
    msb = 40
    return FixedPoint(msb - (128 - terms.bit_length() - 1), msb, terms)


class MaskedRun:
    """The coordinator's state of the one-exchange protocol over a run: the session id, every
    site's public key (from its ``Prepared``; relayed with the first request to each site, with
    the collusion threshold that draws the masking graph), the mask counter (strictly
    increasing), and per phase the union of the ranges seen so far."""

    def __init__(
        self, session_id: bytes, keys: Mapping[str, bytes], threshold: int | None = None
    ) -> None:
        self.session_id = session_id
        self.keys = dict(keys)
        self.threshold = threshold if threshold is not None else majority(len(self.keys))
        """The collusion threshold t (default a majority): from ``SPARSE_FROM`` sites on, each
        site masks with its t neighbours in the Harary graph H(t, n), so that up to t − 1
        colluding sites learn nothing beyond the sum over the others."""
        self.counter = 0
        self.relayed: set[str] = set()
        """Sites that received the keys."""
        self.ranges: dict[str, tuple[int, int]] = {}

    def proposal(self, phase: str) -> FixedPoint:
        """The encoding proposed for the next round of ``phase``."""
        terms = len(self.keys)
        seen = self.ranges.get(phase)
        return first_proposal(terms) if seen is None else propose(FixedPoint.agree([seen], terms))

    def saw(self, phase: str, ranges: list[tuple[int, int]]) -> None:
        """Remember the ranges the sites announced for ``phase``."""
        if phase in self.ranges:
            ranges = [*ranges, self.ranges[phase]]
        if ranges:
            self.ranges[phase] = (min(r[0] for r in ranges), max(r[1] for r in ranges))


class MaskedRound:
    """One round of a summed phase as one exchange, at the coordinator (no dropout recovery).

    Each site answers its reply masked with pairwise masks that cancel in the sum, under the
    encoding proposed; a site whose values that encoding does not hold answers its range and no
    vector, and the round takes a second exchange with the encoding every range fits (the sites
    reuse their kept replies; a fresh counter gives fresh masks). Every site must answer.
    """

    def __init__(
        self,
        run: MaskedRun,
        round_: int,
        phase: str,
        reply: type[Payload],
        payloads: Mapping[str, dict[str, Any]],
        sites: list[str],
    ) -> None:
        self.run = run
        self.round = round_
        self.phase = phase
        self.reply = reply
        self.payloads = dict(payloads)
        self.sites = list(sites)
        self.spec: FixedPoint | None = run.proposal(phase)
        self.counter = 0
        self.exchanges = 0
        self.result: Payload | None = None
        """The sum over sites, as the phase's reply type (when ``done``)."""

    expect = MaskedSum

    @property
    def done(self) -> bool:
        """Whether the sum is known."""
        return self.result is not None

    def requests(self) -> dict[str, Message]:
        """Return this exchange's ``MaskedTask`` for every site."""
        assert self.spec is not None and not self.done
        run = self.run
        run.counter += 1
        self.counter = run.counter
        out: dict[str, Message] = {}
        for name in self.sites:
            first = name not in run.relayed
            out[name] = MaskedTask(
                round=self.round,
                phase=self.phase,
                payload=self.payloads[name],
                counter=self.counter,
                lsb=self.spec.lsb,
                msb=self.spec.msb,
                terms=self.spec.terms,
                session=run.session_id if first else None,
                keys=dict(run.keys) if first else None,
                threshold=run.threshold if first else None,
            )
            run.relayed.add(name)
        return out

    def feed(self, replies: Mapping[str, Message]) -> None:
        """Take every site's ``MaskedSum``; sum the vectors, or ask again with a wider encoding."""
        assert self.spec is not None
        answers: dict[str, MaskedSum] = {}
        for name in self.sites:
            answer = replies.get(name)
            if answer is None:
                raise RemoteProtocolError(f"no MaskedSum in secure round {self.round}", site=name)
            if not isinstance(answer, MaskedSum):
                raise RemoteProtocolError(
                    f"expected MaskedSum, got {type(answer).__name__}", site=name
                )
            if answer.round != self.round or answer.counter != self.counter:
                raise RemoteProtocolError(
                    f"answered round {answer.round} (counter {answer.counter}) during secure "
                    f"round {self.round} (counter {self.counter})",
                    site=name,
                )
            answers[name] = answer
        self.exchanges += 1
        layout, ranges = agree_layout(self.phase, self.reply, answers)
        self.run.saw(self.phase, ranges)
        spec = self.spec
        length = sum(f.size for f in layout)
        missing = []
        for name, answer in answers.items():
            fits = answer.lsb is None or (
                answer.msb is not None and spec.lsb <= answer.lsb and answer.msb <= spec.msb
            )
            vector = answer.vector
            if vector is None:
                if fits:
                    raise RemoteProtocolError(
                        "sent no masked vector though the encoding proposed holds its values",
                        site=name,
                    )
                missing.append(name)
                continue
            if not fits:
                raise RemoteProtocolError(
                    "sent a masked vector in an encoding that does not hold its values", site=name
                )
            if (
                not isinstance(vector, np.ndarray)
                or vector.dtype != np.uint64
                or vector.shape != (length, spec.limbs)
            ):
                raise RemoteProtocolError(
                    f"sent a masked vector that is not a ({length}, {spec.limbs}) uint64 array",
                    site=name,
                )
        if missing:
            if self.exchanges > 1:
                raise RemoteProtocolError(
                    "sent no masked vector in the encoding its own range asked for",
                    site=missing[0],
                )
            self.spec = _agree(self.phase, ranges, spec.terms)
            return
        total = sum_vectors([answers[n].vector for n in self.sites])
        self.result = decode_sum(self.phase, self.reply, layout, spec, total, self.sites[0])


def agree_layout(
    phase: str, reply: type[Payload], answers: Mapping[str, SecureKeys] | Mapping[str, MaskedSum]
) -> tuple[tuple[Field, ...], list[tuple[int, int]]]:
    """Return the layout every site announced and their exponent ranges. Raises
    RemoteProtocolError naming a site whose layout is malformed, differs from the first site's
    or does not fit the phase's reply type, or whose range is half or too wide."""
    first: tuple[str, tuple[Field, ...]] | None = None
    ranges = []
    for name, answer in answers.items():
        layout = to_fields(answer.layout)
        try:
            check_layout(layout)
        except ValueError as exc:
            raise RemoteProtocolError(
                f"announced a malformed layout for phase '{phase}': {exc}", site=name
            ) from None
        if first is None:
            first = (name, layout)
            names = tuple(f.name for f in layout)
            if names != tuple(reply.__struct_fields__):
                raise RemoteProtocolError(
                    f"announced fields {', '.join(names)} for phase '{phase}', whose reply "
                    f"{reply.__name__} has {', '.join(reply.__struct_fields__)}",
                    site=name,
                )
        elif layout != first[1]:
            raise RemoteProtocolError(
                f"its reply to phase '{phase}' has layout {_show(layout)}, but site "
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
    return first[1], ranges


def _agree(phase: str, ranges: list[tuple[int, int]], terms: int) -> FixedPoint:
    spec = FixedPoint.agree(ranges, terms) if ranges else FixedPoint(0, 0, terms)
    if spec.msb - spec.lsb > MAX_BITS:
        raise RemoteProtocolError(
            f"the sites' exponent ranges span {spec.msb - spec.lsb} bits (from 2^{spec.lsb} "
            f"to 2^{spec.msb}), beyond {MAX_BITS}: the values of phase '{phase}' "
            "differ too widely in magnitude to be summed exactly"
        )
    return spec


def decode_sum(
    phase: str,
    reply: type[Payload],
    layout: tuple[Field, ...],
    spec: FixedPoint,
    total: np.ndarray,
    blame: str,
) -> Payload:
    """Return the ring sum ``total`` decoded into the phase's reply type (exact)."""
    fields = unflatten(layout, spec, total)
    try:
        return decode_payload(encode_payload(reply(**fields)), reply)
    except (msgspec.ValidationError, TypeError) as exc:
        raise RemoteProtocolError(
            f"the sum the sites sent for phase '{phase}' does not fit its reply "
            f"{reply.__name__}: {exc}",
            site=blame,
        ) from None


def _show(layout: tuple[Field, ...]) -> str:
    return ", ".join(
        f"{f.name}: {f.kind}" + (f"{list(f.shape)}" if f.shape else "") for f in layout
    )
