"""Secure aggregation (Bonawitz et al. 2017, honest-but-curious server), sans-I/O.

One ``SiteAggregation`` per site and one ``CoordinatorAggregation`` exchange these messages
for one sum (the coordinator only relays keys and sealed shares and never sees one in the clear)::

    1 advertise   site → coord  Keys(cipher_pk, mask_pk)           coord → all: every site's Keys
    2 share       site → coord  Shares(boxes, commitment)          coord → v: the boxes for v
    3 mask        site → coord  Masked(y = x + self mask ± pairwise masks)
    4 unmask      coord → all   Unmask(survivors, dropped)
                  site → coord  Reveal(self-seed shares of survivors, mask-key shares of dropped)
                  coord: Σ y − survivors' self masks ∓ dropped sites' leftover pairwise masks

Each site has two X25519 key pairs: ``cipher`` (its shares are sealed to each recipient with
ChaCha20-Poly1305 under HKDF(X25519(c_u, c_v))) and ``mask`` (pairwise mask seeds
HKDF(X25519(s_u, s_v)), expanded by ChaCha20). Its self-mask seed b_u and its mask private key
s_u are Shamir-shared with threshold t among all sites. Every seal binds the session, the round,
the sender and the recipient: a share replayed from another round, relayed under another
sender's name, or altered, fails to open with a ShareError naming the supposed sender.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedflow.secure import ring, shamir
from fedflow.secure.errors import SecureAggregationError, ShareError

__all__ = [
    "CoordinatorAggregation",
    "Keys",
    "Masked",
    "Reveal",
    "Session",
    "Shares",
    "SiteAggregation",
    "Unmask",
]

_LABEL = b"fedflow-secagg-v1"


@dataclass(frozen=True)
class Session:
    """What every party agrees on before one secure sum (public).

    ``id`` is fresh random bytes per run (chosen by the coordinator), ``round`` the round the sum
    belongs to, ``sites`` every site's name, ``threshold`` t: how many sites must survive to
    unmask (default: a majority), ``length`` and ``limbs`` the shape of the ring vector.
    """

    id: bytes
    round: int
    sites: tuple[str, ...]
    length: int
    limbs: int = 1
    threshold: int = 0

    def __post_init__(self) -> None:
        sites = tuple(sorted(self.sites))
        if len(set(sites)) != len(sites) or len(sites) < 2:
            raise ValueError("secure aggregation needs at least two sites with distinct names")
        object.__setattr__(self, "sites", sites)
        if self.threshold == 0:
            object.__setattr__(self, "threshold", len(sites) // 2 + 1)
        if not 1 <= self.threshold <= len(sites):
            raise ValueError(f"threshold {self.threshold} must lie in 1..{len(sites)}")

    def x(self, site: str) -> int:
        """The Shamir point of ``site`` (1-based position in name order)."""
        return self.sites.index(site) + 1

    def bind(self, *parts: str) -> bytes:
        """Bytes naming this session, round and the given parties (for HKDF and AEAD)."""
        out = _LABEL + len(self.id).to_bytes(2, "big") + self.id + self.round.to_bytes(8, "big")
        for part in parts:
            raw = part.encode("utf-8")
            out += len(raw).to_bytes(2, "big") + raw
        return out


@dataclass(frozen=True)
class Keys:
    """Step 1, site → coordinator → every site: a site's two public keys (32 bytes each)."""

    site: str
    cipher_pk: bytes
    mask_pk: bytes


@dataclass(frozen=True)
class Shares:
    """Step 2, site → coordinator: sealed shares per recipient, and a commitment to the
    self-mask seed (sha256 under the session) so that its reconstruction can be checked."""

    site: str
    boxes: dict[str, bytes]
    commitment: bytes


@dataclass(frozen=True)
class Masked:
    """Step 3, site → coordinator: the masked ring vector."""

    site: str
    vector: np.ndarray


@dataclass(frozen=True)
class Unmask:
    """Step 4, coordinator → every survivor: who sent a masked vector and who dropped after
    sharing its keys."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class Reveal:
    """Step 4, survivor → coordinator: its shares of the survivors' self-mask seeds and of the
    dropped sites' mask keys (68 bytes each; never both for one site)."""

    site: str
    self_seeds: dict[str, bytes]
    mask_keys: dict[str, bytes]


def _hkdf(secret: bytes, session: Session, purpose: str, *names: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=session.id, info=session.bind(purpose, *names)
    ).derive(secret)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def pairwise_seed(session: Session, own: X25519PrivateKey, peer_pk: bytes, a: str, b: str) -> bytes:
    """The mask seed the sites ``a`` and ``b`` share (the same from either side)."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return _hkdf(shared, session, "pairwise mask", *_pair(a, b))


def _commit(session: Session, site: str, seed: bytes) -> bytes:
    return hashlib.sha256(session.bind("self-mask commitment", site) + seed).digest()


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class SiteAggregation:
    """One site's side of one secure sum. Call ``advertise``, ``share``, ``mask``, ``reveal`` in
    order, each with what the coordinator relayed; each returns the message to send."""

    session: Session
    name: str
    _cipher: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    _mask: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    _seed: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _keys: dict[str, Keys] = field(default_factory=dict, repr=False)
    _held: dict[str, tuple[shamir.Share, shamir.Share]] = field(default_factory=dict, repr=False)
    _step: int = 0

    def __post_init__(self) -> None:
        if self.name not in self.session.sites:
            raise ValueError(f"site '{self.name}' is not one of the session's sites")

    def _advance(self, step: int, what: str) -> None:
        if self._step != step:
            raise SecureAggregationError(
                f"secure aggregation: '{what}' out of order", site=self.name
            )
        self._step = step + 1

    def advertise(self) -> Keys:
        """Step 1: this site's public keys."""
        self._advance(0, "advertise")
        return Keys(self.name, _public(self._cipher), _public(self._mask))

    def share(self, keys: Mapping[str, Keys]) -> Shares:
        """Step 2: given every site's Keys (as relayed), seal shares of this site's self-mask
        seed and mask key to each other site. Raises SecureAggregationError if fewer than t
        sites advertised or our own keys came back altered."""
        self._advance(1, "share")
        session = self.session
        mine = keys.get(self.name)
        if mine != Keys(self.name, _public(self._cipher), _public(self._mask)):
            raise SecureAggregationError("our own public keys came back altered", site=self.name)
        unknown = set(keys) - set(session.sites)
        if unknown or len(keys) < session.threshold:
            raise SecureAggregationError(
                f"keys of {len(keys)} sites ({', '.join(sorted(unknown)) or 'none'} unknown); "
                f"the threshold is {session.threshold}",
                site=self.name,
            )
        self._keys = dict(keys)
        n, t = len(session.sites), session.threshold
        seed_shares = shamir.split(int.from_bytes(self._seed, "big"), n, t)
        key_shares = shamir.split(int.from_bytes(_raw(self._mask), "big"), n, t)
        boxes = {}
        for peer in keys:
            i = session.x(peer) - 1
            if peer == self.name:
                self._held[peer] = (seed_shares[i], key_shares[i])
                continue
            plain = seed_shares[i].to_bytes() + key_shares[i].to_bytes()
            boxes[peer] = _seal(session, self._cipher, keys[peer].cipher_pk, self.name, peer, plain)
        return Shares(self.name, boxes, _commit(session, self.name, self._seed))

    def mask(self, boxes: Mapping[str, bytes], vector: np.ndarray) -> Masked:
        """Step 3: open the shares sealed to us (``boxes``: sender → sealed share, as relayed;
        the senders are the sites that completed step 2) and return ``vector`` masked.
        Raises ShareError naming a sender whose share does not open."""
        self._advance(2, "mask")
        session = self.session
        if vector.shape != (session.length, session.limbs) or vector.dtype != np.uint64:
            raise ValueError(f"expected a ({session.length}, {session.limbs}) uint64 ring vector")
        for sender, box in boxes.items():
            if sender not in self._keys or sender == self.name:
                raise ShareError("sent a share but advertised no keys", site=sender)
            plain = _open(
                session, self._cipher, self._keys[sender].cipher_pk, sender, self.name, box
            )
            half = len(plain) // 2
            try:
                pair = (
                    shamir.Share.from_bytes(plain[:half]),
                    shamir.Share.from_bytes(plain[half:]),
                )
            except ValueError as exc:
                raise ShareError(f"its share is malformed: {exc}", site=sender) from None
            if pair[0].x != session.x(self.name) or pair[1].x != session.x(self.name):
                raise ShareError("its share is for another site's point", site=sender)
            self._held[sender] = pair
        acc = ring.Accumulator(session.length, session.limbs)  # one carry propagation
        acc.add(vector)
        acc.add_stream(self._seed)  # the self mask: + expand(b_u)
        for peer in sorted(self._held):
            if peer == self.name:
                continue
            seed = pairwise_seed(session, self._mask, self._keys[peer].mask_pk, self.name, peer)
            acc.add_stream(seed, negative=self.name > peer)  # ± expand(s_uv)
        return Masked(self.name, acc.result())

    def reveal(self, unmask: Unmask) -> Reveal:
        """Step 4: our shares of each survivor's self-mask seed and each dropped site's mask key.
        Raises SecureAggregationError if a site is listed both ways, we are not a survivor, fewer
        than t survive, or a listed site never shared with us."""
        self._advance(3, "reveal")
        survivors, dropped = set(unmask.survivors), set(unmask.dropped)
        if survivors & dropped:
            raise SecureAggregationError(
                f"asked to reveal both secrets of {', '.join(sorted(survivors & dropped))}",
                site=self.name,
            )
        if self.name not in survivors or len(survivors) < self.session.threshold:
            raise SecureAggregationError(
                f"{len(survivors)} survivors (threshold {self.session.threshold}) without us",
                site=self.name,
            )
        unknown = (survivors | dropped) - set(self._held)
        if unknown:
            raise SecureAggregationError(
                f"asked about sites that never shared with us: {', '.join(sorted(unknown))}",
                site=self.name,
            )
        return Reveal(
            self.name,
            {s: self._held[s][0].to_bytes() for s in sorted(survivors)},
            {s: self._held[s][1].to_bytes() for s in sorted(dropped)},
        )


def _seal(
    session: Session,
    own: X25519PrivateKey,
    peer_pk: bytes,
    sender: str,
    recipient: str,
    plain: bytes,
) -> bytes:
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    key = _hkdf(shared, session, "share key", *_pair(sender, recipient))
    nonce = secrets.token_bytes(12)
    return nonce + ChaCha20Poly1305(key).encrypt(
        nonce, plain, session.bind("share", sender, recipient)
    )


def _open(
    session: Session, own: X25519PrivateKey, peer_pk: bytes, sender: str, recipient: str, box: bytes
) -> bytes:
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    key = _hkdf(shared, session, "share key", *_pair(sender, recipient))
    try:
        return ChaCha20Poly1305(key).decrypt(
            box[:12], box[12:], session.bind("share", sender, recipient)
        )
    except (InvalidTag, ValueError):
        raise ShareError(
            f"its share for '{recipient}' does not open: corrupted, replayed from another round "
            "or session, or not sealed by this site",
            site=sender,
        ) from None


@dataclass
class CoordinatorAggregation:
    """The coordinator's side of one secure sum: it relays keys and sealed shares, adds the
    masked vectors and removes the masks with the survivors' revealed shares."""

    session: Session
    keys: dict[str, Keys] = field(default_factory=dict)
    shares: dict[str, Shares] = field(default_factory=dict)
    masked: dict[str, Masked] = field(default_factory=dict)
    reveals: dict[str, Reveal] = field(default_factory=dict)

    def _need(self, have: Sequence[str] | Mapping[str, object], what: str) -> None:
        if len(have) < self.session.threshold:
            raise SecureAggregationError(
                f"secure aggregation needs {self.session.threshold} sites; only {len(have)} "
                f"{what} ({', '.join(sorted(have)) or 'none'})"
            )

    def receive_keys(self, keys: Keys) -> None:
        """Take step 1 from a site."""
        if (
            keys.site not in self.session.sites
            or len(keys.cipher_pk) != 32
            or len(keys.mask_pk) != 32
        ):
            raise SecureAggregationError("sent malformed keys", site=keys.site)
        self.keys[keys.site] = keys

    def relay_keys(self) -> dict[str, Keys]:
        """Every site's Keys, for every site (step 1's broadcast)."""
        self._need(self.keys, "advertised keys")
        return dict(self.keys)

    def receive_shares(self, shares: Shares) -> None:
        """Take step 2 from a site that advertised keys."""
        if shares.site not in self.keys or set(shares.boxes) - set(self.keys):
            raise SecureAggregationError("sent shares out of turn", site=shares.site)
        self.shares[shares.site] = shares

    def relay_shares(self) -> dict[str, dict[str, bytes]]:
        """Per recipient: sender → sealed share (step 2's relay)."""
        self._need(self.shares, "shared their keys")
        return {
            v: {u: s.boxes[v] for u, s in self.shares.items() if v in s.boxes and u != v}
            for v in self.shares
        }

    def receive_masked(self, masked: Masked) -> None:
        """Take step 3 from a site that shared its keys."""
        session = self.session
        if masked.site not in self.shares:
            raise SecureAggregationError("sent a masked vector out of turn", site=masked.site)
        if (
            masked.vector.shape != (session.length, session.limbs)
            or masked.vector.dtype != np.uint64
        ):
            raise SecureAggregationError(
                "sent a masked vector of the wrong shape", site=masked.site
            )
        self.masked[masked.site] = masked

    def unmask_request(self) -> Unmask:
        """Step 4's request: survivors sent a masked vector; the dropped shared keys but did not."""
        self._need(self.masked, "sent masked vectors")
        survivors = tuple(sorted(self.masked))
        dropped = tuple(sorted(set(self.shares) - set(self.masked)))
        return Unmask(survivors, dropped)

    def receive_reveal(self, reveal: Reveal) -> None:
        """Take step 4's answer from a survivor."""
        request = self.unmask_request()
        if reveal.site not in request.survivors:
            raise SecureAggregationError(
                "revealed shares but sent no masked vector", site=reveal.site
            )
        if set(reveal.self_seeds) != set(request.survivors) or set(reveal.mask_keys) != set(
            request.dropped
        ):
            raise SecureAggregationError("revealed shares for the wrong sites", site=reveal.site)
        self.reveals[reveal.site] = reveal

    def _secret(self, owner: str, which: str) -> bytes:
        points = []
        for r in self.reveals.values():
            raw = (r.self_seeds if which == "seed" else r.mask_keys)[owner]
            try:
                points.append(shamir.Share.from_bytes(raw))
            except ValueError as exc:
                raise ShareError(f"revealed a malformed share: {exc}", site=r.site) from None
        value = shamir.combine(points, self.session.threshold)
        if value >= 1 << 256:
            raise SecureAggregationError(f"the shares of its {which} do not agree", site=owner)
        return value.to_bytes(32, "big")

    def result(self) -> np.ndarray:
        """Return the sum of the survivors' input vectors (a ring vector).

        Raises SecureAggregationError if fewer than t survivors revealed, or a reconstructed
        secret does not match what its owner committed to (naming the owner)."""
        session = self.session
        request = self.unmask_request()
        self._need(self.reveals, "revealed their shares")
        total = ring.Accumulator(session.length, session.limbs)  # one carry propagation
        for m in self.masked.values():
            total.add(m.vector)
        for u in request.survivors:
            seed = self._secret(u, "seed")
            if _commit(session, u, seed) != self.shares[u].commitment:
                raise SecureAggregationError(
                    "the shares of its self-mask seed do not agree", site=u
                )
            total.add_stream(seed, negative=True)  # − expand(b_u)
        for u in request.dropped:
            key = X25519PrivateKey.from_private_bytes(self._secret(u, "mask key"))
            if _public(key) != self.keys[u].mask_pk:
                raise SecureAggregationError("the shares of its mask key do not agree", site=u)
            for v in request.survivors:
                seed = pairwise_seed(session, key, self.keys[v].mask_pk, u, v)
                # v added +words if v < u, −words if v > u: take that back
                total.add_stream(seed, negative=v < u)
        return total.result()
