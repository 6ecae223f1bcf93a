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
    "Lanes",
    "add",
    "expand",
    "from_ints",
    "neg",
    "negate_where",
    "place",
    "sub",
    "sub_lanes",
    "total",
    "to_ints",
    "zeros",
]

_NONCE = bytes(16)
_ZERO, _ONE = (
    np.uint64(0),
    np.uint64(1),
)  # ChaCha20 in `cryptography`: 4-byte counter + 12-byte nonce, both zero


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
    the carries out of it are counted (a wrap shows as a sum below the addend) in a uint8
    counter per value, moved into a uint64 count every 255 additions, and added into the next
    limb once, by ``result``: four vector operations per addition of a two-limb vector instead
    of the limb-by-limb carry chain of ``add``. A subtraction adds the two's complement (~v,
    and one more 1 added once at the end). ``add_stream`` adds a ChaCha20 keystream
    (``expand``'s words) through one reused buffer.
    """

    def __init__(self, n: int, limbs: int) -> None:
        self.n, self.limbs = n, limbs
        self._sum = Lanes(n, limbs)
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
        words = self._words(v)
        self._sum.add([words[:, i] for i in range(self.limbs)])

    def sub(self, v: np.ndarray | bytes | bytearray) -> None:
        """Subtract a ring vector (or its raw words): add ~v, and 1 at the end."""
        words = np.invert(self._words(v))
        self._sum.add([words[:, i] for i in range(self.limbs)])
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
        words = self._words(self._buffer)
        if negative:  # −m = ~m + 1: the complement, in the buffer itself, and a 1 at the end
            np.invert(words, out=words)
            self._ones += 1
        self._sum.add([words[:, i] for i in range(self.limbs)])

    def result(self) -> np.ndarray:
        """Return the sum as a ring vector (a new array)."""
        out = np.empty((self.n, self.limbs), dtype=np.uint64)
        for i, limb in enumerate(self._sum.settle(self._ones)):
            out[:, i] = limb
        return out


class Lanes:
    """A running sum of ring vectors held limb by limb ("lanes": one uint64 array per limb),
    exact: numpy's wrapping addition per lane, and per value a count of the carries out of
    each lane but the last (a uint8 counter, moved into a uint64 count every 255 additions),
    propagated once by ``settle``. ``add`` takes the lanes of one vector (contiguous or not);
    at most 2^32 − 1 vectors a sum."""

    def __init__(self, n: int, limbs: int, start: list[np.ndarray] | None = None) -> None:
        self.n = n
        self.lanes = (
            [np.zeros(n, dtype=np.uint64) for _ in range(limbs)]
            if start is None
            else [np.array(lane, dtype=np.uint64) for lane in start]
        )
        self._small = [np.zeros(n, dtype=np.uint8) for _ in range(limbs - 1)]
        self._large: list[np.ndarray | None] = [None] * (limbs - 1)
        self._flag = np.empty(n, dtype=bool)
        self._pending = 0
        self.count = 0

    def add(self, lanes: list[np.ndarray]) -> None:
        """Add one vector, given as its limbs (each n uint64 words, least significant first)."""
        self.count += 1
        if self.count >= 1 << 32:
            raise ValueError("at most 2^32 - 1 vectors in one sum")
        if self._pending == 255:
            self._flush()
        self._pending += 1
        flag, flag8 = self._flag, self._flag.view(np.uint8)
        for i, small in enumerate(self._small):
            lane, word = self.lanes[i], lanes[i]
            np.add(lane, word, out=lane)
            np.less(lane, word, out=flag)  # wrapped: a carry into lane i + 1
            np.add(small, flag8, out=small)
        top = self.lanes[-1]
        np.add(top, lanes[-1], out=top)

    def _flush(self) -> None:
        for i, small in enumerate(self._small):
            large = self._large[i]
            if large is None:
                self._large[i] = small.astype(np.uint64)
            else:
                np.add(large, small, out=large, casting="unsafe")
            small[:] = 0
        self._pending = 0

    def settle(self, ones: int = 0) -> list[np.ndarray]:
        """Return the lanes of the sum (plus ``ones``, added to the lowest lane), carries
        propagated: the exact sum in Z/2^(64·limbs). The sum can take no more additions."""
        self._flush()
        out = self.lanes
        counts = [c if c is not None else np.zeros(self.n, np.uint64) for c in self._large]
        if ones:
            low = out[0] + np.uint64(ones)
            if counts:
                counts[0] += (low < out[0]).astype(np.uint64)
            out[0] = low
        for i, carries in enumerate(counts):  # carries of lane i, then their own carries
            column = out[i + 1] + carries
            if i + 1 < len(counts):
                counts[i + 1] += (column < carries).astype(np.uint64)
            out[i + 1] = column
        return out


def sub_lanes(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    """Return a − b in Z/2^(64·limbs), both given lane by lane (borrows propagated; new arrays)."""
    out = []
    borrow: np.ndarray | None = None
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        diff = x - y  # wraps modulo 2^64
        last = i == len(a) - 1
        if borrow is None:
            if not last:
                borrow = (x < y).astype(np.uint64)
        else:
            taken = diff - borrow
            if not last:
                # a borrow out of lane i: from the lane difference, or from taking the incoming one
                borrow = ((x < y) | (diff < borrow)).astype(np.uint64)
            diff = taken
        out.append(diff)
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


def place(magnitude: np.ndarray, shift: np.ndarray | int, limbs: int) -> np.ndarray:
    """Return the ring vector of the integers magnitude·2^shift (``magnitude`` uint64 words,
    ``shift`` ≥ 0 per value or for all), vectorised: each word split at its place across the
    limb it starts in and the next. The caller checks that every value fits in the ring."""
    magnitude = np.asarray(magnitude, dtype=np.uint64)
    shift = np.asarray(shift, dtype=np.int64)
    word = shift >> 6
    offset = (shift & 63).astype(np.uint64)
    low = magnitude << offset
    high = (magnitude >> _ONE) >> (np.uint64(63) - offset)  # bits pushed past the limb (0 if none)
    out = np.empty((magnitude.shape[0], limbs), dtype=np.uint64)
    if word.ndim == 0:  # one shift for all: whole columns
        out[:] = 0
        w = int(word)
        if w < limbs:
            out[:, w] = low
        if w + 1 < limbs:
            out[:, w + 1] = high
        return out
    for j in range(limbs):
        column = np.where(word == j, low, _ZERO)
        if j:
            column |= np.where(word == j - 1, high, _ZERO)
        out[:, j] = column
    return out


def negate_where(vector: np.ndarray, negative: np.ndarray) -> None:
    """Replace, in place, the ring elements of ``vector`` where ``negative`` is True by their
    negation (two's complement, ~x + 1: limb j gains the carry while every limb below it is
    zero)."""
    if not negative.any():
        return
    carry = negative.copy()
    for j in range(vector.shape[1]):
        column = vector[:, j]
        zero = column == 0
        vector[:, j] = np.where(negative, ~column + carry.astype(np.uint64), column)
        carry &= zero


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
