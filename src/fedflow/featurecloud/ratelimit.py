"""Request pacing and back-off: how fedflow stays a polite client of FeatureCloud.ai.

``RateLimiter`` spaces requests evenly (default 3 per second, the rate the original tool promised
its users) and can be slowed down when the platform answers 429. ``backoff_delay`` gives the
jittered exponential delays used between retries of transient transport errors. Both take an
injectable clock and sleep so that tests never wait in real time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

__all__ = ["DEFAULT_RATE", "RateLimiter", "backoff_delay"]

DEFAULT_RATE = 3.0
"""Requests per second a client sends to the FeatureCloud web API by default."""


class RateLimiter:
    """Let at most ``rate`` requests per second through, evenly spaced (thread-safe).

    ``acquire()`` blocks (through the injected ``sleep``) until the next request may go and
    returns the seconds it waited. ``slow_down()`` halves the rate, down to ``floor``.
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        floor: float = 0.2,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive (got {rate})")
        self.rate = float(rate)
        self.floor = min(floor, self.rate)
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        """Seconds between two requests at the current rate."""
        return 1.0 / self.rate

    def acquire(self) -> float:
        """Wait until a request may be sent; return the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return wait

    def slow_down(self, factor: float = 2.0) -> float:
        """Divide the rate by ``factor`` (not below the floor); return the new rate."""
        with self._lock:
            self.rate = max(self.floor, self.rate / factor)
            return self.rate

    def pause(self, seconds: float) -> None:
        """Push the next allowed request at least ``seconds`` into the future (no sleep here)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Return the delay before retry number ``attempt`` (0-based): ``min(cap, base * 2**attempt)``
    scaled by a random factor in [0.5, 1) ("equal jitter"), so that clients do not retry in step."""
    ceiling = min(cap, base * (2**attempt))
    return ceiling * (0.5 + 0.5 * rng())
