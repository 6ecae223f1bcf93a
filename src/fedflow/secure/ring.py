"""Vectors in the ring Z/2^k, k = 64·limbs, as numpy uint64 arrays, and the mask generator.

A vector of ``n`` ring elements is a C-contiguous ``(n, limbs)`` uint64 array, least significant
limb first. ``limbs == 1`` is the plain 64-bit ring (numpy's wrap-around is the modular
addition); wider rings propagate carries limb by limb. ``expand`` turns a 32-byte seed into mask
words with ChaCha20 (a keystream under the seed as key): the same seed gives the same mask at
every party, and without the seed the mask is indistinguishable from uniform.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = [
    "Accumulator",
    "add",
    "expand",
    "from_ints",
    "neg",
    "sub",
    "total",
    "to_ints",
    "zeros",
]

_NONCE = bytes(16)  # ChaCha20 in `cryptography`: 4-byte counter + 12-byte nonce, both zero


def zeros(n: int, limbs: int) -> np.ndarray:
    """Return ``n`` zeros of Z/2^(64·limbs)."""
    return np.zeros((n, limbs), dtype=np.uint64)


def expand(seed: bytes, n: int, limbs: int) -> np.ndarray:
    """Return ``n`` pseudo-random elements of Z/2^(64·limbs) from the 32-byte ``seed``.

    Each seed must serve one purpose only (the caller derives it with HKDF for that purpose);
    the keystream starts at counter 0.
    """
    if len(seed) != 32:
        raise ValueError("a mask seed has 32 bytes")
    size = n * limbs * 8
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(size))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=False).reshape(n, limbs).copy()


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return a + b in Z/2^(64·limbs) (new array)."""
    out = a + b  # wraps modulo 2^64 per limb
    if a.shape[1] == 1:
        return out
    carry = (out < a).astype(np.uint64)
    for i in range(1, a.shape[1]):
        column = out[:, i] + carry[:, i - 1]
        # a carry out of limb i: from the limb sum itself, or from adding the incoming carry
        carry[:, i] |= (column < out[:, i]).astype(np.uint64)
        out[:, i] = column
    return out


class Accumulator:
    """Sums (and differences) of many ring vectors of one shape, with one carry propagation.

    Each limb is summed with numpy's wrapping addition, in place; for every limb but the last
    the carries out of it are counted (a wrap shows as a sum below the previous one) and added
    into the next limb once, by ``result``: a few vector operations per addition instead of the
    limb-by-limb carry chain of ``add``. A subtraction adds the two's complement (~v, and one
    more 1 added once at the end). ``add_stream`` adds a ChaCha20 keystream (``expand``'s words)
    through one reused buffer.
    """

    def __init__(self, n: int, limbs: int) -> None:
        self.n, self.limbs = n, limbs
        self._sum = _Sum(n, limbs)
        self._ones = 0
        self._zero: bytes | None = None
        self._buffer: bytearray | None = None

    def _words(self, v: np.ndarray | bytes | bytearray) -> np.ndarray:
        if isinstance(v, (bytes, bytearray)):
            return np.frombuffer(v, dtype="<u8").reshape(self.n, self.limbs)
        if v.shape != (self.n, self.limbs) or v.dtype != np.uint64:
            raise ValueError(f"expected a ({self.n}, {self.limbs}) uint64 ring vector")
        return v

    def add(self, v: np.ndarray | bytes | bytearray) -> None:
        """Add a ring vector (or the raw little-endian words of one, e.g. a keystream)."""
        self._sum.add(self._words(v))

    def sub(self, v: np.ndarray | bytes | bytearray) -> None:
        """Subtract a ring vector (or its raw words): add ~v, and 1 at the end."""
        self._sum.add(np.invert(self._words(v)))
        self._ones += 1

    def add_stream(self, seed: bytes, *, negative: bool = False) -> None:
        """Add (or subtract) ``expand(seed, n, limbs)``, without allocating it anew."""
        if len(seed) != 32:
            raise ValueError("a mask seed has 32 bytes")
        size = self.n * self.limbs * 8
        if self._zero is None or self._buffer is None:
            self._zero, self._buffer = bytes(size), bytearray(size)
        encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        encryptor.update_into(self._zero, self._buffer)
        if negative:
            self.sub(self._buffer)
        else:
            self.add(self._buffer)

    def result(self) -> np.ndarray:
        """Return the sum as a ring vector (a new array)."""
        return self._sum.settle(self._ones)


class _Sum:
    def __init__(self, n: int, limbs: int) -> None:
        self.limbs = [np.zeros(n, dtype=np.uint64) for _ in range(limbs)]
        self.carries = [np.zeros(n, dtype=np.uint64) for _ in range(limbs - 1)]
        self._spare = np.empty(n, dtype=np.uint64)
        self._flag = np.empty(n, dtype=bool)
        self.count = 0

    def add(self, words: np.ndarray) -> None:
        self.count += 1
        if self.count >= 1 << 32:
            raise ValueError("at most 2^32 - 1 vectors in one sum")
        for i, carries in enumerate(self.carries):
            before, after = self.limbs[i], self._spare
            np.add(before, words[:, i], out=after)
            np.less(after, before, out=self._flag)  # wrapped: a carry into limb i + 1
            np.add(carries, self._flag, out=carries, casting="unsafe")
            self.limbs[i], self._spare = after, before
        top = self.limbs[-1]
        np.add(top, words[:, -1], out=top)

    def settle(self, ones: int) -> np.ndarray:
        out = np.stack(self.limbs, axis=1)
        if ones:  # the 1s of the two's complements, into limb 0 (a carry when it wraps)
            low = out[:, 0] + np.uint64(ones)
            if self.carries:
                self.carries[0] += (low < out[:, 0]).astype(np.uint64)
            out[:, 0] = low
        for i, carries in enumerate(self.carries):  # carries of limb i, then their own carries
            column = out[:, i + 1] + carries
            if i + 2 < out.shape[1]:
                self.carries[i + 1] += (column < carries).astype(np.uint64)
            out[:, i + 1] = column
        return out


def total(vectors: list[np.ndarray]) -> np.ndarray:
    """Return the sum of ring vectors of one shape (at least one; a new array)."""
    acc = Accumulator(vectors[0].shape[0], vectors[0].shape[1])
    for v in vectors:
        acc.add(v)
    return acc.result()


def neg(a: np.ndarray) -> np.ndarray:
    """Return −a in Z/2^(64·limbs): the two's complement (~a + 1)."""
    one = zeros(a.shape[0], a.shape[1])
    one[:, 0] = 1
    return add(~a, one)


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return a − b in Z/2^(64·limbs) (new array; borrows propagate limb by limb)."""
    out = a - b  # wraps modulo 2^64 per limb
    if a.shape[1] == 1:
        return out
    borrow = (a < b).astype(np.uint64)
    for i in range(1, a.shape[1]):
        incoming = borrow[:, i - 1]
        # a borrow out of limb i: from the limb difference itself, or from taking the incoming one
        borrow[:, i] |= (out[:, i] < incoming).astype(np.uint64)
        out[:, i] -= incoming
    return out


def from_ints(values: list[int], limbs: int) -> np.ndarray:
    """Return Python ints (any sign) reduced modulo 2^(64·limbs), as a ring vector."""
    modulus = 1 << (64 * limbs)
    raw = b"".join((v % modulus).to_bytes(8 * limbs, "little") for v in values)
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(len(values), limbs)


def to_ints(a: np.ndarray, *, signed: bool = True) -> list[int]:
    """Return the elements as Python ints: in [−2^(k−1), 2^(k−1)) if ``signed``, else [0, 2^k)."""
    limbs = a.shape[1]
    raw = np.ascontiguousarray(a, dtype="<u8").tobytes()
    width = 8 * limbs
    return [
        int.from_bytes(raw[i : i + width], "little", signed=signed)
        for i in range(0, len(raw), width)
    ]
