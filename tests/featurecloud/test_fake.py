"""The fakes enforce the contract: auth, roles, status machine, one-use tokens, uploads, runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from fedflow.errors import PlatformError
from fedflow.featurecloud._http import PlatformHTTPError, Policy
from fedflow.featurecloud.client import FeatureCloudClient
from fedflow.featurecloud.controller import ControllerClient
from fedflow.featurecloud.fake import FakeClock, FakeController, FakeWeb, parse_numbers

from .conftest import USERS, Controllers


def login(web: FakeWeb, user: str, policy: Policy) -> FeatureCloudClient:
    fc = FeatureCloudClient(user, USERS[user], url=web.url, policy=policy)
    fc.login()
    return fc


def project_with(
    web: FakeWeb, policy: Policy, *members: str, tool: str = "mean-app"
) -> tuple[int, dict[str, FeatureCloudClient]]:
    alice = login(web, "alice", policy)
    pid = alice.create_project_for_tool(tool)
    clients = {"alice": alice}
    for user in members:
        clients[user] = login(web, user, policy)
        clients[user].join(alice.create_token(pid)["token"])
    return pid, clients


def test_auth_is_required_and_refresh_works(web: FakeWeb, policy: Policy) -> None:
    raw = httpx.get(f"{web.url}/api/user/info/")
    assert raw.status_code == 401
    fc = login(web, "alice", policy)
    web.expire_access_tokens()
    assert fc.user_info()["username"] == "alice"  # refreshed once, transparently
    refreshes = [s for s in web.seen if s["path"] == "/api/auth/token/refresh/"]
    assert len(refreshes) == 1
    web.expire_access_tokens()
    web.revoke_refresh_tokens()
    with pytest.raises(PlatformError, match="refused to refresh"):
        fc.user_info()


def test_a_second_401_after_refresh_stops(web: FakeWeb, policy: Policy) -> None:
    fc = login(web, "alice", policy)
    web.inject("/api/user/info/", 401, times=2)
    with pytest.raises(PlatformError, match="still not authorised"):
        fc.user_info()


def test_wrong_password_is_refused_without_echoing_it(web: FakeWeb, policy: Policy) -> None:
    fc = FeatureCloudClient("alice", "not-the-password", url=web.url, policy=policy)
    with pytest.raises(PlatformError, match="refused the login of user 'alice'") as info:
        fc.login()
    assert "not-the-password" not in str(info.value) and "not-the-password" not in repr(fc)


def test_roles_only_the_coordinator_changes_status_and_makes_tokens(
    web: FakeWeb, policy: Policy
) -> None:
    pid, fc = project_with(web, policy, "bob")
    for act in (lambda: fc["bob"].set_status(pid, "prepare"), lambda: fc["bob"].create_token(pid)):
        with pytest.raises(PlatformHTTPError, match="only the coordinator") as info:
            act()
        assert info.value.status == 403
    carol = login(web, "carol", policy)
    with pytest.raises(PlatformHTTPError, match="not a member") as info:
        carol.project(pid)
    assert info.value.status == 403
    assert fc["alice"].project(pid)["role"] == "coordinator"
    assert fc["bob"].project(pid)["role"] == "participant"


def test_status_machine(web: FakeWeb, policy: Policy) -> None:
    alice = login(web, "alice", policy)
    project = alice.create_project("p")
    pid = int(project["id"])
    assert alice.status(pid) == "init"
    with pytest.raises(PlatformError, match="only be reached from 'ready'"):
        alice.set_status(pid, "prepare")
    with pytest.raises(PlatformError, match="not among the apps"):
        alice.set_workflow(project, alice.app_id("mean-app"))  # not bought yet: 403
    alice.ensure_app("mean-app")
    alice.set_workflow(project, alice.app_id("mean-app"))
    assert alice.status(pid) == "ready"
    with pytest.raises(PlatformError, match="cannot be set"):
        alice.set_status(pid, "running")
    with pytest.raises(PlatformError, match="only a preparing or running project"):
        alice.set_status(pid, "shutdown")
    alice.set_status(pid, "prepare")
    with pytest.raises(PlatformError, match="only an ended run"):
        alice.set_status(pid, "ready")
    alice.set_status(pid, "shutdown")
    assert alice.status(pid) == "stopped"
    alice.set_status(pid, "ready")
    assert alice.status(pid) == "ready"


def test_tokens_are_one_use(web: FakeWeb, policy: Policy) -> None:
    alice = login(web, "alice", policy)
    pid = alice.create_project_for_tool("mean-app")
    token = alice.create_token(pid)["token"]
    login(web, "bob", policy).join(token)
    with pytest.raises(PlatformError, match="already been used"):
        login(web, "carol", policy).join(token)
    with pytest.raises(PlatformError, match="token not found"):
        login(web, "carol", policy).join("no-such-token")


def test_uploads_only_in_prepare_and_run_gives_the_mean(
    web: FakeWeb, policy: Policy, controllers: Controllers, clock: FakeClock, tmp_path: Path
) -> None:
    pid, fc = project_with(web, policy, "bob")
    a, b = tmp_path / "a.csv", tmp_path / "b.txt"
    a.write_text("value\n1\n2\n3\n")
    b.write_text("4, 5; 6 10\n")
    ctl_a = ControllerClient(controllers("alice"), policy=policy)
    ctl_b = ControllerClient(controllers("bob"), policy=policy)
    with pytest.raises(PlatformError, match="only in 'prepare'"):
        ctl_a.upload(pid, a)
    fc["alice"].set_status(pid, "prepare")
    ctl_a.contribute(pid, [a])
    with pytest.raises(PlatformError, match="already finalized"):
        ctl_a.upload(pid, a)
    with pytest.raises(PlatformError, match="nothing uploaded"):
        ctl_b.finalize(pid)
    assert fc["alice"].status(pid) == "prepare"
    ctl_b.contribute(pid, [b])
    assert fc["alice"].status(pid) == "running"
    assert ctl_b.runs(pid)[0]["resultSteps"] == []
    clock.advance(2.5)
    assert fc["bob"].status(pid) == "finished"
    got = ctl_b.download_latest(pid, tmp_path / "out")
    assert got["run"] == 1 and len(got["logs"]) == 1 and len(got["results"]) == 1
    with zipfile.ZipFile(got["results"][0]) as zf:
        result = json.loads(zf.read("result.json"))
    assert result["mean"] == pytest.approx(31 / 7) and result["n"] == 7
    assert result["local"] == {"n": 4, "sum": 25.0}
    assert "mean=" in got["logs"][0].read_text()
    on_disk = controllers.servers["bob"].data_dir / "workflows" / f"Project_{pid}" / "Run_1"
    assert (on_disk / f"results_pr{pid}_run1_step1.zip").is_file()
    # reset and run again: the most recent run is downloaded
    fc["alice"].set_status(pid, "ready")
    fc["alice"].set_status(pid, "prepare")
    ctl_a.contribute(pid, [a])
    ctl_b.contribute(pid, [a])
    clock.advance(2.5)
    got = ctl_a.download_latest(pid, tmp_path / "out2")
    assert got["run"] == 2 and got["status"] == "finished"
    with zipfile.ZipFile(io.BytesIO(got["results"][0].read_bytes())) as zf:
        assert json.loads(zf.read("result.json"))["mean"] == pytest.approx(2.0)


def test_bad_data_or_an_unsimulated_app_fails_the_run(
    web: FakeWeb, policy: Policy, controllers: Controllers, clock: FakeClock, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("x\n1\noops\n")
    pid, fc = project_with(web, policy)
    fc["alice"].set_status(pid, "prepare")
    ctl = ControllerClient(controllers("alice"), policy=policy)
    ctl.contribute(pid, [bad])
    clock.advance(3)
    assert fc["alice"].status(pid) == "failed"
    got = ctl.download_latest(pid, tmp_path / "o")
    assert got["results"] == [] and "'oops' is not a number" in got["logs"][0].read_text()
    pid, fc = project_with(web, policy, tool="federated-svd")
    fc["alice"].set_status(pid, "prepare")
    ctl.contribute(pid, [bad])
    clock.advance(3)
    assert fc["alice"].status(pid) == "failed"


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with FakeWeb(dict(USERS), rate_limit=2) as web:
        answers = [httpx.get(f"{web.url}/api/apps/").status_code for _ in range(3)]
        assert answers[:2] == [200, 200] and answers[2] == 429
        response = httpx.get(f"{web.url}/api/apps/")
        assert response.headers["Retry-After"] == "1"
        policy = Policy(rate=1000.0, max_429_waits=0, sleep=lambda s: None)
        with pytest.raises(PlatformError, match="rate-limited"):
            FeatureCloudClient("alice", USERS["alice"], url=web.url, policy=policy).apps()


def test_unknown_things_fail_loudly(web: FakeWeb, tmp_path: Path, policy: Policy) -> None:
    assert httpx.get(f"{web.url}/api/nothing/").status_code == 404
    assert "no such endpoint" in httpx.get(f"{web.url}/api/nothing/").json()["detail"]
    with FakeController(web.url, tmp_path) as ctl:
        ok = ControllerClient(ctl.url, policy=policy)
        assert ok.ping()
        (tmp_path / "f.txt").write_text("1")
        with pytest.raises(PlatformError, match="no site_info.json"):
            ok.upload(1, tmp_path / "f.txt")
        response = httpx.post(f"{ctl.url}/file-upload/", params={"projectId": "1"})
        assert (
            response.status_code == 400
            and "exactly the query parameters" in response.json()["detail"]
        )


def test_parse_numbers() -> None:
    assert parse_numbers("a,b\n1,2\n3 4\n") == [1, 2, 3, 4]
    assert parse_numbers("1;2\n\n3") == [1, 2, 3]
    with pytest.raises(ValueError, match="f.csv, line 3: 'x'"):
        parse_numbers("h\n1\nx\n", "f.csv")


def test_the_fakes_run_by_hand(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "fedflow.featurecloud.fake",
        "web",
        "--port",
        "0",
        "--user",
        "alice:pw",
    ]
    web = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    ctl = None
    try:
        assert web.stdout is not None
        url = web.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        policy = Policy(rate=100.0)
        with FeatureCloudClient("alice", "pw", url=url, policy=policy) as fc:
            (tmp_path / "site_info.json").write_text(json.dumps(fc.site_info()))
        argv = [sys.executable, "-m", "fedflow.featurecloud.fake", "controller", "--port", "0"]
        ctl = subprocess.Popen(
            [*argv, "--web", url, "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert ctl.stdout is not None
        ctl_url = ctl.stdout.readline().split()[-1]
        assert ControllerClient(ctl_url, policy=policy).ping()
    finally:
        for proc in (web, ctl):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
