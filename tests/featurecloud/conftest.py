"""Fixtures: fake FeatureCloud servers on ephemeral loopback ports, a fake clock, credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedflow.featurecloud._http import Policy
from fedflow.featurecloud.client import FeatureCloudClient
from fedflow.featurecloud.fake import FakeClock, FakeController, FakeWeb

USERS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw", "carol": "carol-secret-pw"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy(clock: FakeClock) -> Policy:
    """A client policy on the fake clock: sleeps are recorded, never waited."""
    return Policy(rate=1000.0, clock=clock, sleep=clock.sleep, rng=lambda: 0.5)


@pytest.fixture
def web(clock: FakeClock) -> Iterator[FakeWeb]:
    server = FakeWeb(dict(USERS), rate_limit=None, run_seconds=2.0, clock=clock)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text("".join(f"{u}={p}\n" for u, p in USERS.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


class Controllers:
    """Fake controllers for users, each with its site_info.json fetched from the fake web API."""

    def __init__(self, web: FakeWeb, root: Path, policy: Policy) -> None:
        self.web, self.root, self.policy = web, root, policy
        self.servers: dict[str, FakeController] = {}

    def __call__(self, user: str) -> str:
        if user not in self.servers:
            data_dir = self.root / f"controller-{user}"
            data_dir.mkdir(parents=True)
            with FeatureCloudClient(user, USERS[user], url=self.web.url, policy=self.policy) as fc:
                (data_dir / "site_info.json").write_text(
                    json.dumps(fc.site_info()), encoding="utf-8"
                )
            self.servers[user] = FakeController(self.web.url, data_dir)
            self.servers[user].start()
        return self.servers[user].url

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture
def controllers(web: FakeWeb, tmp_path: Path, policy: Policy) -> Iterator[Controllers]:
    ctl = Controllers(web, tmp_path, policy)
    yield ctl
    ctl.stop()
