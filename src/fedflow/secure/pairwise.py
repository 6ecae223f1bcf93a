"""Pairwise masks under keys agreed once per run: one exchange per secure sum (analytics).

For analytics a site that drops ends the run, so no site's masks are ever reconstructed: the
self-mask and the Shamir shares of the full protocol (``fedflow.secure.protocol``) exist only to
make that reconstruction safe, and are not needed. What remains is the pairwise masking of
Bonawitz et al. (2017) with the key agreement hoisted out of the rounds::

    once per run   site → coord  its X25519 public key (in its Prepared answer)
                   coord → site  every site's public key and the run's session id
                                 (with the first masked request)
    every sum      site → coord  y_u = x_u + Σ_{v > u} PRG(k_uv, c) − Σ_{v < u} PRG(k_uv, c)

k_uv = HKDF(X25519(s_u, P_v)) bound to the session and the two names, derived once; the mask of
one sum is ChaCha20 under HKDF-Expand(k_uv, counter c and what the sum is: round, phase, ring
shape), expanded into Z/2^(64·limbs). Σ_u y_u = Σ_u x_u: the masks cancel. The counter strictly
increases at each site (a mask is never used twice: two vectors under one mask would give away
their difference), and the keys are fixed for the run (a changed peer set is refused).

Without every site's vector the sum keeps the masks of the missing sites: a coordinator (with up
to n − 2 colluding sites) learns at most the sum over the honest sites, which the answer and the
colluders' own inputs give away anyway. Nothing here ever reveals a key or a mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from fedflow.secure import ring
from fedflow.secure.errors import SecureAggregationError

__all__ = ["MaskLabel", "PairwiseMasker", "sum_vectors"]

_LABEL = b"fedflow-secagg-pairwise-v1"


def _part(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "big") + raw


@dataclass(frozen=True)
class MaskLabel:
    """What one masked sum is (public, the same at every site): a mask is derived from the pair
    key and all of it, so a vector masked for one sum never unmasks in another."""

    counter: int
    round: int
    phase: str
    length: int
    limbs: int
    lsb: int
    msb: int
    terms: int

    def to_bytes(self) -> bytes:
        out = _LABEL + b"mask"
        for number in (self.counter, self.round, self.length, self.limbs, self.terms):
            out += number.to_bytes(8, "big")
        for signed in (self.lsb, self.msb):
            out += signed.to_bytes(8, "big", signed=True)
        return out + _part(self.phase.encode("utf-8"))


class PairwiseMasker:
    """One site's pairwise masking for a run: its key pair (fresh per run), the pair keys agreed
    once with ``agree``, and ``mask`` per sum with a strictly increasing counter."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._private = X25519PrivateKey.generate()
        self.public_key = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.session: bytes | None = None
        self.keys: dict[str, bytes] = {}
        """Every site's public key, as agreed (fixed for the run)."""
        self._pair: dict[str, bytes] = {}
        self.last_counter = 0

    @property
    def agreed(self) -> bool:
        """Whether the run's keys are agreed."""
        return self.session is not None

    def agree(self, session: bytes, keys: Mapping[str, bytes]) -> None:
        """Agree the pair keys with every other site, once per run. Raises
        SecureAggregationError if our own key came back altered, fewer than two sites take part,
        a key is not 32 bytes or is a low-order point (naming that site), or the keys were
        agreed already (a changed peer set or session is refused; the same ones are accepted)."""
        keys = dict(keys)
        if self.session is not None:
            if session != self.session or keys != self.keys:
                raise SecureAggregationError(
                    "the coordinator sent another session or peer set within the run "
                    "(keys are agreed once per run)",
                    site=self.name,
                )
            return
        if keys.get(self.name) != self.public_key:
            raise SecureAggregationError("our own public key came back altered", site=self.name)
        if len(keys) < 2:
            raise SecureAggregationError("a secure sum needs at least two sites", site=self.name)
        pair = {}
        for peer, pk in sorted(keys.items()):
            if peer == self.name:
                continue
            if len(pk) != 32:
                raise SecureAggregationError(f"a public key of {len(pk)} bytes", site=peer)
            try:
                shared = self._private.exchange(X25519PublicKey.from_public_bytes(pk))
            except ValueError:  # a low-order point: the shared secret would be all zeros
                raise SecureAggregationError(
                    "a public key that agrees no secret", site=peer
                ) from None
            low, high = sorted((self.name, peer))
            info = _LABEL + b"pair key" + _part(low.encode()) + _part(high.encode())
            pair[peer] = HKDF(algorithm=hashes.SHA256(), length=32, salt=session, info=info).derive(
                shared
            )
        self.session, self.keys, self._pair = session, keys, pair

    def mask(self, label: MaskLabel, vector: np.ndarray) -> np.ndarray:
        """Return ``vector`` (a (length, limbs) ring vector) plus this site's pairwise masks for
        the sum ``label``. Raises SecureAggregationError before the keys are agreed or when the
        counter does not exceed the last one used (a mask is never reused)."""
        if self.session is None:
            raise SecureAggregationError("a masked sum before the keys were agreed", site=self.name)
        if label.counter <= self.last_counter:
            raise SecureAggregationError(
                f"mask counter {label.counter} replayed or out of order (last {self.last_counter})",
                site=self.name,
            )
        if vector.shape != (label.length, label.limbs) or vector.dtype != np.uint64:
            raise ValueError(f"expected a ({label.length}, {label.limbs}) uint64 ring vector")
        self.last_counter = label.counter
        info = label.to_bytes()
        acc = ring.Accumulator(label.length, label.limbs)
        acc.add(vector)
        for peer, key in self._pair.items():
            seed = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(key)
            acc.add_stream(seed, negative=self.name > peer)
        return acc.result()


def sum_vectors(vectors: list[np.ndarray]) -> np.ndarray:
    """Return the sum of ring vectors of one shape (at least one)."""
    return ring.total(vectors)
