"""A site's side of secure aggregation: its reply to a summed phase leaves the site only masked.

The node agent hands every secure-round message to ``SecureSite.handle`` (with ``secure = true``
the agent answers no plain ``Task``). Its public key for the run's pairwise masks
(``public_key``) leaves in the agent's ``Prepared`` answer. Without dropout recovery
(analytics) a round is one message::

    MaskedTask   (the first of the run: agree the pair keys with its neighbours in the masking
                 graph drawn from every site's relayed key and the threshold, once)
                 compute local_<phase> (a retry of the same round reuses the kept reply); answer
                 its layout, its exponent range and, if the proposed encoding holds its values,
                 the reply encoded and masked with pairwise masks under a fresh counter

With dropout recovery (training), per round::

    SecureTask   compute local_<phase> (through ``compute``), keep the reply here, flatten it;
                 answer our public keys, its layout and the exponent range of its values
    RelayKeys    check the agreed encoding holds our values; answer sealed Shamir shares
    RelayShares  open the shares sealed to us; answer our reply encoded and masked
    Unmask       answer our shares of the survivors' self-mask seeds and the dropped sites' keys

Everything from the coordinator is hostile input: a step out of order, another round, a
session id that changes within the run, a site list without us, a threshold below a majority,
keys or boxes of the wrong size, an encoding our values do not fit — each is refused with one
line. A share that does not open names the site that sealed it (``Failure.blame``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from fedflow.errors import RemoteProtocolError
from fedflow.secure import (
    FixedPoint,
    Keys,
    MaskLabel,
    PairwiseMasker,
    SecureAggregationError,
    Session,
    ShareError,
    SiteAggregation,
    Unmask,
)
from fedflow.secure.layout import MAX_BITS, Flat, flatten
from fedflow.secure.shamir import SHARE_BYTES
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
)
from fedflow.wire import Unmask as UnmaskMessage

__all__ = ["BOX_BYTES", "MAX_SITES", "SecureSite"]

BOX_BYTES = 12 + 2 * (2 + SHARE_BYTES) + 16
"""A sealed pair of shares: nonce, two 68-byte shares, the Poly1305 tag."""
MAX_SITES = 10_000
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")

Compute = Callable[[int, str, dict[str, Any]], tuple[Any, float]]
"""(round, phase, request payload) → (the app's reply for a summed phase, seconds taken)."""


class ShareBlame(RemoteProtocolError):
    """A share sealed by another site does not open; ``blame`` is that site."""

    def __init__(self, message: str, blame: str) -> None:
        super().__init__(message)
        self.blame = blame


@dataclasses.dataclass
class _Kept:
    """The reply of the round in flight of the one-exchange protocol (kept for a retry)."""

    round: int
    phase: str
    payload: dict[str, Any]
    flat: Flat


@dataclasses.dataclass
class _Round:
    round: int
    flat: Flat
    aggregation: SiteAggregation
    spec: FixedPoint | None = None


class SecureSite:
    """One site's secure aggregation over a run: one ``SiteAggregation`` per round."""

    def __init__(self, site: str, compute: Compute) -> None:
        self.site = site
        self.compute = compute
        self.session: bytes | None = None
        """The run's session id (the first SecureTask's); another one later is refused."""
        self.last_round = 0
        self.current: _Round | None = None
        self.masker = PairwiseMasker(site)
        """This run's key pair and, once agreed, the pair keys (one-exchange protocol)."""
        self.last_counter = 0
        self.kept: _Kept | None = None

    @property
    def public_key(self) -> bytes:
        """This site's X25519 public key for the run's pairwise masks."""
        return self.masker.public_key

    def handle(self, message: Message) -> Message:
        """Return the answer to a secure-round message (raises ProtocolError and the app's
        errors, which the agent turns into a Failure)."""
        if isinstance(message, MaskedTask):
            return self._masked(message)
        if isinstance(message, SecureTask):
            return self._task(message)
        current = self._in_round(getattr(message, "round", None))
        if isinstance(message, RelayKeys):
            return self._keys(current, message)
        if isinstance(message, RelayShares):
            return self._shares(current, message)
        if isinstance(message, UnmaskMessage):
            return self._unmask(current, message)
        raise RemoteProtocolError(f"unexpected {type(message).__name__} message")

    def _in_round(self, round_: int | None) -> _Round:
        if self.current is None:
            raise RemoteProtocolError("secure aggregation step out of order: no round in flight")
        if round_ != self.current.round:
            raise RemoteProtocolError(
                f"secure aggregation step for round {round_} during round {self.current.round}"
            )
        return self.current

    # -- one exchange (no dropout recovery) ---------------------------------------------------
    def _masked(self, msg: MaskedTask) -> MaskedSum:
        if (msg.session is None) != (msg.keys is None) or (
            msg.threshold is not None and msg.keys is None
        ):
            raise RemoteProtocolError(
                "a masked task with a session id but no keys, or keys or a threshold alone"
            )
        if msg.session is not None and msg.keys is not None:
            self._check_session(msg.session)
            self._check_sites(list(msg.keys))
            try:
                self.masker.agree(msg.session, msg.keys, msg.threshold)
            except SecureAggregationError as exc:
                where = f" (site '{exc.site}')" if exc.site and exc.site != self.site else ""
                raise RemoteProtocolError(exc.message + where) from None
            self.session = msg.session
        elif not self.masker.agreed:
            raise RemoteProtocolError("a masked task before the run's keys were relayed")
        if msg.terms != len(self.masker.keys):
            raise RemoteProtocolError(
                f"an encoding for sums of {msg.terms} terms in a run of "
                f"{len(self.masker.keys)} sites"
            )
        if msg.counter <= self.last_counter:
            raise RemoteProtocolError(
                f"mask counter {msg.counter} replayed or out of order (last {self.last_counter}): "
                "a mask is never used twice"
            )
        kept = self.kept
        if kept is not None and msg.round == kept.round:  # a retry with a wider encoding
            if msg.phase != kept.phase or not _same(msg.payload, kept.payload):
                raise RemoteProtocolError(
                    f"a different request for round {msg.round}, whose reply was computed already"
                )
            seconds = 0.0
        elif msg.round > self.last_round:
            self.last_round = msg.round
            self.kept = None
            reply, seconds = self.compute(msg.round, msg.phase, msg.payload)
            kept = self.kept = _Kept(msg.round, msg.phase, dict(msg.payload), flatten(reply))
        else:
            raise RemoteProtocolError(
                f"secure round {msg.round} replayed or out of order (last round {self.last_round})"
            )
        self.last_counter = msg.counter
        flat = kept.flat
        own = flat.range
        vector = None
        if msg.lsb is not None and msg.msb is not None:
            if not msg.lsb <= msg.msb or msg.msb - msg.lsb > MAX_BITS:
                raise RemoteProtocolError(f"an encoding from 2^{msg.lsb} to 2^{msg.msb}")
            if own is None or (msg.lsb <= own[0] and own[1] <= msg.msb):
                spec = FixedPoint(msg.lsb, msg.msb, msg.terms)
                label = MaskLabel(
                    msg.counter,
                    msg.round,
                    msg.phase,
                    flat.length,
                    spec.limbs,
                    spec.lsb,
                    spec.msb,
                    spec.terms,
                )
                vector = self.masker.mask(label, flat.encode(spec))
        lsb, msb = own if own is not None else (None, None)
        return MaskedSum(
            round=msg.round,
            counter=msg.counter,
            layout=[LayoutField(f.name, f.kind, list(f.shape)) for f in flat.layout],
            lsb=lsb,
            msb=msb,
            vector=vector,
            seconds=seconds,
        )

    def _check_session(self, session: bytes) -> None:
        if not 16 <= len(session) <= 64:
            raise RemoteProtocolError(f"a session id of {len(session)} bytes (16 to 64)")
        if self.session is not None and session != self.session:
            raise RemoteProtocolError("the secure-aggregation session changed within the run")

    def _check_sites(self, sites: list[str]) -> None:
        if not 2 <= len(sites) <= MAX_SITES or len(set(sites)) != len(sites):
            raise RemoteProtocolError(f"a secure round over {len(sites)} sites, or a site twice")
        bad = [s for s in sites if not _NAME.fullmatch(s)]
        if bad:
            raise RemoteProtocolError(f"a secure round names an invalid site {bad[0][:70]!r}")
        if self.site not in sites:
            raise RemoteProtocolError(f"a secure round without this site ('{self.site}')")

    # -- step 1 --------------------------------------------------------------------------------
    def _task(self, msg: SecureTask) -> SecureKeys:
        if msg.round <= self.last_round:
            raise RemoteProtocolError(
                f"secure round {msg.round} replayed or out of order (last round {self.last_round})"
            )
        self._check_session(msg.session)
        sites = list(msg.sites)
        self._check_sites(sites)
        n = len(sites)
        if not n // 2 + 1 <= msg.threshold <= n:
            raise RemoteProtocolError(
                f"threshold {msg.threshold} for {n} sites: this site needs at least a majority "
                f"({n // 2 + 1}), else a coordinator could unmask a single site"
            )
        self.session = msg.session
        self.last_round = msg.round
        self.current = None
        reply, seconds = self.compute(msg.round, msg.phase, msg.payload)
        flat = flatten(reply)
        session = Session(msg.session, msg.round, tuple(sites), flat.length, 1, msg.threshold)
        aggregation = SiteAggregation(session, self.site)
        keys = aggregation.advertise()
        self.current = _Round(msg.round, flat, aggregation)
        lsb, msb = flat.range if flat.range is not None else (None, None)
        return SecureKeys(
            round=msg.round,
            keys=PublicKeys(cipher_pk=keys.cipher_pk, mask_pk=keys.mask_pk),
            layout=[LayoutField(f.name, f.kind, list(f.shape)) for f in flat.layout],
            lsb=lsb,
            msb=msb,
            seconds=seconds,
        )

    # -- step 2 --------------------------------------------------------------------------------
    def _keys(self, current: _Round, msg: RelayKeys) -> SecureShares:
        session = current.aggregation.session
        if msg.terms != len(session.sites):
            raise RemoteProtocolError(
                f"an encoding for sums of {msg.terms} terms in a round of "
                f"{len(session.sites)} sites"
            )
        if not msg.lsb <= msg.msb or msg.msb - msg.lsb > MAX_BITS:
            raise RemoteProtocolError(f"an encoding from 2^{msg.lsb} to 2^{msg.msb}")
        own = current.flat.range
        if own is not None and not (msg.lsb <= own[0] and own[1] <= msg.msb):
            raise RemoteProtocolError(
                f"the agreed encoding (2^{msg.lsb} to 2^{msg.msb}) does not hold this site's "
                f"values (2^{own[0]} to 2^{own[1]})"
            )
        keys = {}
        for name, pk in msg.keys.items():
            if name not in session.sites or len(pk.cipher_pk) != 32 or len(pk.mask_pk) != 32:
                raise RemoteProtocolError(f"malformed or unknown keys relayed for '{name[:70]}'")
            keys[name] = Keys(name, pk.cipher_pk, pk.mask_pk)
        spec = FixedPoint(msg.lsb, msg.msb, msg.terms)
        current.spec = spec
        current.aggregation.session = dataclasses.replace(session, limbs=spec.limbs)
        shares = current.aggregation.share(keys)
        return SecureShares(
            round=current.round, boxes=dict(shares.boxes), commitment=shares.commitment
        )

    # -- step 3 --------------------------------------------------------------------------------
    def _shares(self, current: _Round, msg: RelayShares) -> SecureMasked:
        for sender, box in msg.boxes.items():
            if len(box) != BOX_BYTES:
                raise ShareBlame(
                    f"its share for '{self.site}' has {len(box)} bytes, not {BOX_BYTES}",
                    sender[:70],
                )
        if current.spec is None:
            raise RemoteProtocolError("secure aggregation step out of order: shares before keys")
        vector = current.flat.encode(current.spec)
        try:
            masked = current.aggregation.mask(dict(msg.boxes), vector)
        except ShareError as exc:
            raise ShareBlame(exc.message, exc.site or "?") from None
        return SecureMasked(round=current.round, vector=masked.vector)

    # -- step 4 --------------------------------------------------------------------------------
    def _unmask(self, current: _Round, msg: UnmaskMessage) -> SecureReveal:
        reveal = current.aggregation.reveal(Unmask(tuple(msg.survivors), tuple(msg.dropped)))
        self.current = None  # the round is over: a replayed Unmask is refused
        return SecureReveal(
            round=current.round, self_seeds=reveal.self_seeds, mask_keys=reveal.mask_keys
        )


def _same(a: Any, b: Any) -> bool:
    """Whether two decoded payloads are equal (numpy arrays compared by dtype, shape, values)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)
