"""The polite HTTP layer shared by the web API client and the controller client.

Every request goes through ``PoliteClient.send``, which

- names fedflow and its version in the ``User-Agent``;
- waits for the rate limiter (default 3 requests per second);
- retries transient transport errors with jittered exponential back-off, at most
  ``Policy.retries`` times: for every method a failure to connect (the request never left), for
  idempotent methods (GET, HEAD, PUT, DELETE) also read/write errors, timeouts and HTTP 502, 503
  and 504. A POST is never repeated once it may have reached the server;
- on HTTP 429 waits what ``Retry-After`` says (or a back-off delay when it says nothing), halves
  the rate for the rest of the session, and gives up with PlatformError after
  ``Policy.max_429_waits`` waits or when asked to wait longer than ``Policy.max_retry_after``;
- on HTTP 403 stops at once with PlatformError (no retry);
- on HTTP 401 raises ``Unauthorized`` so that the web client can refresh its access token once.

httpx errors are translated here into ``fedflow.errors.PlatformError``. Nothing secret is ever
logged: only the method, the path and the status code.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from fedflow._version import __version__
from fedflow.errors import PlatformError, PlatformHTTPError, Unauthorized
from fedflow.featurecloud.ratelimit import DEFAULT_RATE, RateLimiter, backoff_delay

__all__ = [
    "USER_AGENT",
    "PlatformHTTPError",
    "Policy",
    "PoliteClient",
    "Unauthorized",
    "is_loopback",
]

log = logging.getLogger("fedflow.featurecloud")

USER_AGENT = (
    f"fedflow/{__version__} (+https://pypi.org/project/fedflow-studies/; "
    "headless FeatureCloud.ai automation)"
)

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_TRANSIENT_STATUS = frozenset({502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)


@dataclass
class Policy:
    """How a client paces, retries and waits. Tests inject ``clock``, ``sleep`` and ``rng``."""

    rate: float = DEFAULT_RATE
    retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_429_waits: int = 3
    max_retry_after: float = 300.0
    timeout: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    rng: Callable[[], float] = field(default=random.random, repr=False)

    def limiter(self) -> RateLimiter:
        """Return a new rate limiter at this policy's rate, clock and sleep."""
        return RateLimiter(self.rate, clock=self.clock, sleep=self.sleep)


def is_loopback(url: str) -> bool:
    """True when ``url`` points at this machine (localhost, 127.0.0.0/8 or ::1)."""
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")


def detail_of(response: httpx.Response) -> str:
    """Return the server's explanation of an error response, on one short line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    text = " ".join(response.text.split())
    return text[:200] if text else response.reason_phrase


def _retry_after(value: str | None, now: Callable[[], datetime]) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


class PoliteClient:
    """A rate-limited, carefully retrying ``httpx.Client`` for one base URL.

    ``what`` names the service in error messages ("FeatureCloud", "the controller at …").
    ``transport`` is any httpx transport (tests pass a MockTransport or a flaky wrapper).
    """

    def __init__(
        self,
        base_url: str,
        *,
        what: str,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        self.policy = policy or Policy()
        self.limiter = limiter or self.policy.limiter()
        self.requests_sent = 0
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json, */*"},
            timeout=self.policy.timeout,
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> PoliteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request under the policy; return the 2xx response.

        Raises Unauthorized on 401, PlatformError on 403, on any other error status, on a
        transport failure that outlived its retries, and when 429 waits are exhausted.
        """
        method = method.upper()
        attempt = 0
        waits_429 = 0
        while True:
            self.limiter.acquire()
            self.requests_sent += 1
            try:
                response = self._http.request(
                    method, path, json=json, params=params, content=content, headers=headers
                )
            except _NOT_SENT as exc:
                attempt = self._retry_or_raise(method, path, attempt, exc, sent=False)
                continue
            except _MAYBE_SENT as exc:
                attempt = self._retry_or_raise(method, path, attempt, exc, sent=True)
                continue
            except httpx.HTTPError as exc:
                raise PlatformError(
                    f"{self.what}: {method} {path} failed ({type(exc).__name__})"
                ) from exc
            status = response.status_code
            log.debug("%s %s -> %s", method, path, status)
            if 200 <= status < 300:
                return response
            if status == 429:
                waits_429 += 1
                self._wait_429(method, path, response, waits_429)
                continue
            if (
                status in _TRANSIENT_STATUS
                and method in _IDEMPOTENT
                and attempt < self.policy.retries
            ):
                delay = backoff_delay(
                    attempt,
                    base=self.policy.backoff_base,
                    cap=self.policy.backoff_cap,
                    rng=self.policy.rng,
                )
                log.info("%s %s: HTTP %s, retrying in %.1f s", method, path, status, delay)
                self.policy.sleep(delay)
                attempt += 1
                continue
            self._raise_for(method, path, response)

    def _retry_or_raise(
        self, method: str, path: str, attempt: int, exc: httpx.HTTPError, *, sent: bool
    ) -> int:
        retryable = (not sent or method in _IDEMPOTENT) and attempt < self.policy.retries
        if not retryable:
            if not sent or method in _IDEMPOTENT:
                why = f"gave up after {attempt} retries"
            else:
                why = "not retried: the request may have reached the server"
            raise PlatformError(
                f"{self.what} at {self.base_url}: {method} {path} failed ({type(exc).__name__}; {why})"
            ) from exc
        delay = backoff_delay(
            attempt, base=self.policy.backoff_base, cap=self.policy.backoff_cap, rng=self.policy.rng
        )
        log.info("%s %s: %s, retrying in %.1f s", method, path, type(exc).__name__, delay)
        self.policy.sleep(delay)
        return attempt + 1

    def _wait_429(self, method: str, path: str, response: httpx.Response, waits: int) -> None:
        if waits > self.policy.max_429_waits:
            raise PlatformError(
                f"{self.what}: still rate-limited (HTTP 429) after {self.policy.max_429_waits} waits "
                f"on {method} {path}; stopping. Try again later and less often."
            )
        delay = _retry_after(response.headers.get("Retry-After"), lambda: datetime.now(UTC))
        if delay is None:
            delay = backoff_delay(
                waits - 1,
                base=max(1.0, self.policy.backoff_base),
                cap=self.policy.backoff_cap,
                rng=self.policy.rng,
            )
        if delay > self.policy.max_retry_after:
            raise PlatformError(
                f"{self.what}: rate-limited (HTTP 429) on {method} {path} and asked to wait "
                f"{delay:.0f} s (more than {self.policy.max_retry_after:.0f} s); stopping"
            )
        rate = self.limiter.slow_down()
        log.warning(
            "%s: rate-limited (HTTP 429) on %s %s; waiting %.1f s, slowing down to %.2f requests/s",
            self.what,
            method,
            path,
            delay,
            rate,
        )
        self.policy.sleep(delay)

    def _raise_for(self, method: str, path: str, response: httpx.Response) -> None:
        status = response.status_code
        detail = detail_of(response)
        if status == 401:
            raise Unauthorized(
                f"{self.what}: not authorised (HTTP 401) on {method} {path}: {detail}", status=401
            )
        if status == 403:
            raise PlatformHTTPError(
                f"{self.what}: forbidden (HTTP 403) on {method} {path}: {detail}. Stopping: this "
                "account may not do this, or the platform asks us to stop",
                status=403,
            )
        raise PlatformHTTPError(
            f"{self.what}: HTTP {status} on {method} {path}: {detail}", status=status
        )
