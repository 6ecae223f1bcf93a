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
one sum is the AES-256-CTR keystream under the key k_uv from the 128-bit initial counter block
SHA-256(label)[:16] (AES-NI makes it about twice ChaCha20's speed here), the label being the
counter c and what the sum is (round, phase, ring shape, encoding). Σ_u y_u =
Σ_u x_u: the masks cancel. The counter strictly increases at each site (a mask is never used
twice: two vectors under one mask would give away their difference), and the keys are fixed for
the run (a changed peer set is refused).

The keystream's 64-bit words fill the vector block by block (``BLOCK`` values each), lane by
lane within a block (the first words are limb 0 of the block's values, then limb 1, …): a fixed
public order, so that a site adds each mask lane-wise in cache (``ring.Lanes``).

**The masking graph.** With fewer than ``SPARSE_FROM`` sites, or a collusion threshold t of n − 1
or more, every pair of sites shares a mask (the complete graph). From ``SPARSE_FROM`` sites on,
each site masks only with its neighbours in the Harary graph H(t, n) (SecAgg+, Bell et al. 2020,
with a deterministic graph): the sites in an order drawn from SHA-256 of the session and every
public key, each joined to the ⌊t/2⌋ nearest on either side of the circle (and, for odd t, to the
site opposite). H(t, n) is t-connected: removing any t − 1 sites leaves the others connected.

Without every site's vector the sum keeps the masks of the missing sites. A coordinator with
colluding sites learns the sum over each connected part of the graph left by the honest sites;
with at most t − 1 colluders (n − 2 on the complete graph) that is one part: the sum over the
honest sites, which the answer and the colluders' own inputs give away anyway. Nothing here
ever reveals a key or a mask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedflow.secure import ring
from fedflow.secure.errors import SecureAggregationError

__all__ = [
    "BLOCK",
    "SPARSE_FROM",
    "MaskLabel",
    "PairwiseMasker",
    "degree",
    "harary",
    "masking_graph",
    "sum_vectors",
]

_LABEL = b"fedflow-secagg-pairwise-v2"

BLOCK = 1 << 14
"""Values per block of a mask's keystream (the words of a block are laid out lane by lane)."""

SPARSE_FROM = 17
"""From this many sites on, a site masks only with its neighbours in the Harary graph H(t, n)
(t: the collusion threshold); below it with every other site."""


def degree(n: int, threshold: int | None) -> int:
    """How many sites each site masks with (at least; the Harary graph of odd degree on an odd
    number of sites gives one site one more): n − 1 (every other site) below ``SPARSE_FROM``
    sites or without a threshold, else the threshold t (t ≥ a majority; n − 1 at most)."""
    if threshold is None or n < SPARSE_FROM:
        return n - 1
    return min(threshold, n - 1)


def harary(k: int, n: int) -> list[set[int]]:
    """The Harary graph H(k, n) on vertices 0..n−1 (2 ≤ k < n): each vertex joined to the ⌊k/2⌋
    nearest on either side of a circle, and for odd k to the vertex opposite (for odd n, vertices
    0..(n−1)/2 to i + (n+1)/2). It has k·n/2 edges (rounded up) and vertex connectivity k
    (Harary 1962): removing any k − 1 vertices leaves it connected."""
    if not 2 <= k < n:
        raise ValueError(f"a Harary graph needs 2 <= k < n (k = {k}, n = {n})")
    edges: list[set[int]] = [set() for _ in range(n)]

    def join(a: int, b: int) -> None:
        a, b = a % n, b % n
        if a != b:
            edges[a].add(b)
            edges[b].add(a)

    for i in range(n):
        for step in range(1, k // 2 + 1):
            join(i, i + step)
    if k % 2:
        if n % 2 == 0:
            for i in range(n // 2):
                join(i, i + n // 2)
        else:
            for i in range((n - 1) // 2 + 1):
                join(i, i + (n + 1) // 2)
    return edges


def masking_graph(
    session: bytes, keys: Mapping[str, bytes], threshold: int | None
) -> dict[str, frozenset[str]]:
    """Return each site's masking neighbours (public: every site and the coordinator can derive
    it from the session id, the public keys and the threshold): every other site below
    ``SPARSE_FROM`` sites or when ``degree`` is n − 1, else its neighbours in H(t, n) over the
    sites in an order drawn from SHA-256 of the session and every (name, key)."""
    names = sorted(keys)
    n = len(names)
    k = degree(n, threshold)
    if k >= n - 1:
        return {a: frozenset(b for b in names if b != a) for a in names}
    digest = hashlib.sha256(_LABEL + b"graph" + _part(session))
    for name in names:
        digest.update(_part(name.encode("utf-8")) + _part(keys[name]))
    seed = digest.digest()
    order = sorted(names, key=lambda name: hashlib.sha256(seed + name.encode("utf-8")).digest())
    edges = harary(k, n)
    return {order[i]: frozenset(order[j] for j in edges[i]) for i in range(n)}


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
    once with ``agree`` (with its neighbours in the masking graph), and ``mask`` per sum with a
    strictly increasing counter."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._private = X25519PrivateKey.generate()
        self.public_key = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.session: bytes | None = None
        self.keys: dict[str, bytes] = {}
        """Every site's public key, as agreed (fixed for the run)."""
        self.threshold: int | None = None
        """The collusion threshold the masking graph was drawn for (None: every pair)."""
        self.neighbours: frozenset[str] = frozenset()
        """The sites this one shares a mask with (the masking graph, ``masking_graph``)."""
        self._pair: dict[str, bytes] = {}
        self.last_counter = 0

    @property
    def agreed(self) -> bool:
        """Whether the run's keys are agreed."""
        return self.session is not None

    def agree(
        self, session: bytes, keys: Mapping[str, bytes], threshold: int | None = None
    ) -> None:
        """Agree the pair keys with this site's neighbours in the masking graph, once per run
        (``threshold``: the collusion threshold t, at least a majority; None: mask with every
        other site). Raises SecureAggregationError if our own key came back altered, fewer than
        two sites take part, the threshold is below a majority or above the number of sites, a
        key is not 32 bytes or is a low-order point (naming that site), or the keys were agreed
        already (a changed peer set, session or threshold is refused; the same are accepted)."""
        keys = dict(keys)
        if self.session is not None:
            if session != self.session or keys != self.keys or threshold != self.threshold:
                raise SecureAggregationError(
                    "the coordinator sent another session or peer set within the run, or "
                    "another threshold (keys are agreed once per run)",
                    site=self.name,
                )
            return
        if keys.get(self.name) != self.public_key:
            raise SecureAggregationError("our own public key came back altered", site=self.name)
        if len(keys) < 2:
            raise SecureAggregationError("a secure sum needs at least two sites", site=self.name)
        n = len(keys)
        if threshold is not None and not n // 2 + 1 <= threshold <= n:
            raise SecureAggregationError(
                f"threshold {threshold} for {n} sites: this site needs at least a majority "
                f"({n // 2 + 1}), else a few colluding sites could unmask it",
                site=self.name,
            )
        for peer, pk in keys.items():
            if len(pk) != 32:
                raise SecureAggregationError(f"a public key of {len(pk)} bytes", site=peer)
        neighbours = masking_graph(session, keys, threshold)[self.name]
        pair = {}
        for peer, pk in sorted(keys.items()):
            if peer not in neighbours:
                continue
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
        self.threshold, self.neighbours = threshold, neighbours

    def mask(self, label: MaskLabel, vector: np.ndarray) -> np.ndarray:
        """Return ``vector`` (a (length, limbs) ring vector) plus this site's pairwise masks for
        the sum ``label`` (+ the mask shared with a neighbour whose name sorts after ours, − one
        whose name sorts before). Raises SecureAggregationError before the keys are agreed or
        when the counter does not exceed the last one used (a mask is never reused)."""
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
        return _masked(vector, self._pair, self.name, label)


def _masked(
    vector: np.ndarray, pair: Mapping[str, bytes], name: str, label: MaskLabel
) -> np.ndarray:
    """``vector`` plus the masks of the pair keys ``pair`` (peer → key) for the sum ``label``,
    block by block: each block's masks are added lane by lane into one exact running sum (a
    mask to subtract as its complement ~m, the 1s of −m = ~m + 1 added once at the end)."""
    length, limbs = label.length, label.limbs
    streams = [(_keystream(key, label), name > peer) for peer, key in pair.items()]
    negatives = sum(negative for _, negative in streams)
    out = np.empty((length, limbs), dtype=np.uint64)
    zero, buffer = _buffers(min(BLOCK, length) * limbs * 8)
    for start in range(0, length, BLOCK):
        stop = min(start + BLOCK, length)
        count = stop - start
        nbytes = count * limbs * 8
        source, target = memoryview(zero)[:nbytes], memoryview(buffer)[:nbytes]
        words = np.frombuffer(buffer, dtype="<u8", count=count * limbs).reshape(limbs, count)
        lanes = list(words)
        total = ring.Lanes(count, limbs, [vector[start:stop, i] for i in range(limbs)])
        for encryptor, negative in streams:
            encryptor.update_into(source, target)
            if negative:
                np.invert(words, out=words)
            total.add(lanes)
        for i, lane in enumerate(total.settle(negatives)):
            out[start:stop, i] = lane
    return out


def _keystream(key: bytes, label: MaskLabel) -> CipherContext:
    """The mask generator of pair key ``key`` for the sum ``label``: AES-256-CTR from the initial
    counter block SHA-256(label)[:16] (a label is used once per run, so no two masks share a
    counter block range in practice: 2^64 blocks apart at worst for random starts)."""
    start = hashlib.sha256(label.to_bytes()).digest()[:16]
    return Cipher(algorithms.AES(key), modes.CTR(start)).encryptor()


_BUFFERS: dict[int, tuple[bytes, bytearray]] = {}


def _buffers(size: int) -> tuple[bytes, bytearray]:
    """Zeros to encrypt and a buffer for the keystream, of ``size`` bytes, reused from one sum
    to the next (their allocation and first touch cost as much as the adds of a short mask)."""
    if size not in _BUFFERS:
        if len(_BUFFERS) > 4:
            _BUFFERS.clear()
        _BUFFERS[size] = (bytes(size), bytearray(size))
    return _BUFFERS[size]


def mask_words(key: bytes, label: MaskLabel) -> np.ndarray:
    """The mask that pair key ``key`` gives for the sum ``label``, as a (length, limbs) ring
    vector (the keystream's words in ``BLOCK``-value blocks, lane by lane within a block):
    what ``PairwiseMasker.mask`` adds or subtracts for one neighbour; for tests."""
    length, limbs = label.length, label.limbs
    stream = _keystream(key, label).update(bytes(length * limbs * 8))
    words = np.frombuffer(stream, dtype="<u8")
    out = np.empty((length, limbs), dtype=np.uint64)
    for start in range(0, length, BLOCK):
        stop = min(start + BLOCK, length)
        block = words[start * limbs : stop * limbs].reshape(limbs, stop - start)
        out[start:stop] = block.T
    return out


def sum_vectors(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Return the sum of ring vectors of one shape (at least one)."""
    return ring.total(list(vectors))
