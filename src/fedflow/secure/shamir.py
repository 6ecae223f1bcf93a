"""Shamir secret sharing over the prime field GF(2^521 − 1).

A secret is an integer below 2^512 (a 32-byte key or seed fits with room to spare). ``split``
draws a random polynomial f of degree t − 1 with f(0) = secret and hands out f(1), …, f(n);
``combine`` interpolates f(0) from any t of them (Lagrange). Fewer than t shares reveal nothing:
for every candidate secret there is exactly one polynomial through it and the t − 1 points.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["PRIME", "SHARE_BYTES", "Share", "combine", "split"]

PRIME = (1 << 521) - 1
"""The Mersenne prime 2^521 − 1: every 32-byte secret is a field element."""

SHARE_BYTES = 66
"""Bytes of one share's value (521 bits, rounded up)."""


class Share(NamedTuple):
    """One point (x, f(x)) of the sharing polynomial; x ≥ 1."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Return the share as 2 + 66 bytes (x big-endian, then y)."""
        return self.x.to_bytes(2, "big") + self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Parse ``to_bytes``; raise ValueError if malformed."""
        if len(raw) != 2 + SHARE_BYTES:
            raise ValueError("a share has 68 bytes")
        x, y = int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")
        if not x >= 1 or y >= PRIME:
            raise ValueError("share out of range")
        return cls(x, y)


def split(secret: int, n: int, t: int) -> list[Share]:
    """Return n shares of ``secret`` (0 ≤ secret < 2^512) of which any t recover it.

    Raises ValueError unless 1 ≤ t ≤ n < 65536.
    """
    if not 0 <= secret < (1 << 512):
        raise ValueError("a secret is an integer in [0, 2^512)")
    if not 1 <= t <= n < 1 << 16:
        raise ValueError(f"need 1 <= threshold <= sites < 65536, got threshold {t} of {n}")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share], t: int) -> int:
    """Return the secret from at least ``t`` shares (the first t distinct points are used).

    Raises ValueError for fewer than t distinct shares. With t shares of a sharing of a
    higher threshold the result is a field element unrelated to the secret.
    """
    points: dict[int, int] = {}
    for share in shares:
        if share.x in points and points[share.x] != share.y:
            raise ValueError(f"two different shares for point {share.x}")
        points.setdefault(share.x, share.y)
    if len(points) < t or t < 1:
        raise ValueError(f"need {t} distinct shares, got {len(points)}")
    chosen = list(points.items())[:t]
    secret = 0
    for i, (xi, yi) in enumerate(chosen):
        num, den = 1, 1
        for j, (xj, _) in enumerate(chosen):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret
