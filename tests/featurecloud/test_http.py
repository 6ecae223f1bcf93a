"""The polite HTTP layer: pacing, retries only where safe, 429/403/401 handling (MockTransport)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fedflow import __version__
from fedflow.errors import PlatformError
from fedflow.featurecloud._http import Policy, PoliteClient, Unauthorized
from fedflow.featurecloud.fake import FakeClock
from fedflow.featurecloud.ratelimit import RateLimiter, backoff_delay


def make(
    handler: Callable[[httpx.Request], httpx.Response], clock: FakeClock, **kw: object
) -> PoliteClient:
    policy = Policy(clock=clock, sleep=clock.sleep, rng=lambda: 1.0, **kw)  # type: ignore[arg-type]
    return PoliteClient(
        "https://fc.example",
        what="FeatureCloud",
        transport=httpx.MockTransport(handler),
        policy=policy,
    )


class Script:
    """A MockTransport handler answering from a list of responses/exceptions, recording requests."""

    def __init__(self, *steps: int | Exception | httpx.Response) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return httpx.Response(step, json={"detail": f"status {step}"})


def test_limiter_spaces_requests_at_three_per_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(7):
        limiter.acquire()
    assert clock.slept == pytest.approx([1 / 3] * 6)
    assert clock() - 1000.0 == pytest.approx(
        2.0
    )  # 7 requests take 2 s: never more than 3 per second


def test_limiter_slows_down_to_a_floor() -> None:
    limiter = RateLimiter(3.0, floor=0.5)
    assert limiter.slow_down() == 1.5
    assert limiter.slow_down() == 0.75
    assert limiter.slow_down() == 0.5
    assert limiter.slow_down() == 0.5
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_backoff_grows_is_jittered_and_capped() -> None:
    assert [backoff_delay(i, base=1, cap=10, rng=lambda: 1.0) for i in range(6)] == [
        1,
        2,
        4,
        8,
        10,
        10,
    ]
    assert backoff_delay(3, base=1, cap=10, rng=lambda: 0.0) == 4.0  # half of the ceiling at least


def test_every_request_names_fedflow_and_is_paced_by_default() -> None:
    clock = FakeClock()
    script = Script()
    client = make(script, clock)
    for _ in range(4):
        client.send("GET", "/api/apps/")
    assert all(
        r.headers["User-Agent"].startswith(f"fedflow/{__version__} (+") for r in script.requests
    )
    assert clock.slept == pytest.approx([1 / 3] * 3)


def test_connect_errors_are_retried_with_growing_backoff() -> None:
    clock = FakeClock()
    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"), 200)
    client = make(script, clock, rate=1000.0)
    assert client.send("POST", "/api/projects/", json={}).status_code == 200
    backoffs = [s for s in clock.slept if s > 0.01]
    assert backoffs == [0.5, 1.0]
    assert len(script.requests) == 3


def test_a_post_that_may_have_arrived_is_not_repeated() -> None:
    clock = FakeClock()
    script = Script(httpx.ReadError("reset"), 200)
    client = make(script, clock, rate=1000.0)
    with pytest.raises(PlatformError, match="not retried"):
        client.send("POST", "/api/projects/", json={})
    assert len(script.requests) == 1


def test_transient_5xx_on_get_is_retried_then_given_up() -> None:
    clock = FakeClock()
    script = Script(503, 502, 504, 503, 200)
    client = make(script, clock, rate=1000.0, retries=3)
    with pytest.raises(PlatformError, match="HTTP 503"):
        client.send("GET", "/api/projects/1/")
    assert len(script.requests) == 4
    script = Script(503, 200)
    assert make(script, clock, rate=1000.0).send("GET", "/x").status_code == 200


def test_500_and_5xx_on_post_are_not_retried() -> None:
    clock = FakeClock()
    for status, method in ((500, "GET"), (503, "POST")):
        script = Script(status, 200)
        with pytest.raises(PlatformError, match=f"HTTP {status}"):
            make(script, clock, rate=1000.0).send(method, "/x")
        assert len(script.requests) == 1


def test_429_honours_retry_after_and_slows_down() -> None:
    clock = FakeClock()
    script = Script(httpx.Response(429, headers={"Retry-After": "7"}), 200)
    client = make(script, clock)
    assert client.send("GET", "/api/apps/").status_code == 200
    assert 7.0 in clock.slept
    assert client.limiter.rate == 1.5


def test_429_accepts_an_http_date() -> None:
    clock = FakeClock()
    when = httpx.Response(
        429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )  # in the past
    script = Script(when, 200)
    assert make(script, clock).send("GET", "/x").status_code == 200


def test_429_waits_are_bounded() -> None:
    clock = FakeClock()
    script = Script(*[httpx.Response(429, headers={"Retry-After": "1"})] * 10)
    with pytest.raises(PlatformError, match="still rate-limited"):
        make(script, clock, max_429_waits=3).send("GET", "/x")
    assert len(script.requests) == 4


def test_429_asking_for_too_long_a_wait_stops() -> None:
    clock = FakeClock()
    script = Script(httpx.Response(429, headers={"Retry-After": "86400"}))
    with pytest.raises(PlatformError, match="asked to wait 86400 s"):
        make(script, clock).send("GET", "/x")
    assert 86400 not in clock.slept


def test_403_stops_at_once_and_401_is_reported() -> None:
    clock = FakeClock()
    script = Script(403, 200)
    with pytest.raises(PlatformError, match="forbidden .*Stopping"):
        make(script, clock).send("GET", "/x")
    assert len(script.requests) == 1
    with pytest.raises(Unauthorized):
        make(Script(401), clock).send("GET", "/x")
