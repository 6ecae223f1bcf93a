"""``fcauto`` against the fake servers: every subcommand, and the 429/403/401/5xx/timeout paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fedflow import __version__
from fedflow.errors import ExitCode
from fedflow.featurecloud._http import Policy
from fedflow.featurecloud.cli import main
from fedflow.featurecloud.fake import FakeClock, FakeWeb

from .conftest import USERS, Controllers

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def fcauto(web: FakeWeb, env_file: Path, policy: Policy, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run fcauto with the fake web API and credentials; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--url", web.url, "--env", str(env_file)], policy=policy)
        out, err = capsys.readouterr()
        for secret in USERS.values():
            assert secret not in out and secret not in err
        return code, out, err

    return run


def create(fcauto: Run, n: int = 1) -> tuple[int, list[str]]:
    code, out, _ = fcauto("create", "-u", "alice", "-t", "mean-app", "-n", str(n))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("PROJECT: ")
    return int(lines[0].split()[1]), [
        line.split()[1] for line in lines[1:] if line.startswith("TOKEN: ")
    ]


def test_create_prints_project_and_one_token_per_participant(fcauto: Run, web: FakeWeb) -> None:
    pid, tokens = create(fcauto, 2)
    assert len(tokens) == 2 and len(set(tokens)) == 2
    assert web.project_status(pid) == "ready"
    code, out, _ = fcauto("create", "-u", "alice", "-t", "mean-app", "-n", "1", "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["bought_app"] is False and len(data["tokens"]) == 1
    assert all(s["user_agent"].startswith(f"fedflow/{__version__}") for s in web.seen)


def test_join_query_prep_reset(fcauto: Run, web: FakeWeb) -> None:
    pid, (token,) = create(fcauto)
    code, out, _err = fcauto("join", "-u", "bob", "-t", token, "-p", str(pid))
    assert code == 0 and f"bob joined project {pid}" in out, _err
    code, out, _ = fcauto("query", "-u", "bob", "-p", str(pid))
    assert (code, out) == (0, "ready\n")
    code, out, _ = fcauto("prep", "-u", "alice", "-p", str(pid), "--json")
    assert code == 0 and json.loads(out)["status"] == "prepare"
    code, out, err = fcauto("join", "-u", "carol", "-t", token, "-p", str(pid))
    assert code == 5 and "already been used" in err
    code, out, _ = fcauto("--json", "query", "-u", "alice", "-p", str(pid))
    assert json.loads(out) == {
        "ok": True,
        "project": pid,
        "status": "prepare",
        "role": "coordinator",
    }
    fcauto("prep", "-u", "alice", "-p", str(pid))  # from 'prepare': refused
    code, _, err = fcauto("reset", "-u", "alice", "-p", str(pid))
    assert code == 5 and "only an ended run" in err


def test_participant_acts_are_forbidden_with_403(fcauto: Run) -> None:
    pid, (token,) = create(fcauto)
    fcauto("join", "-u", "bob", "-t", token, "-p", str(pid))
    code, out, err = fcauto("prep", "-u", "bob", "-p", str(pid))
    assert code == 5 and "forbidden (HTTP 403)" in err and "Stopping" in err and out == ""


def full_run(fcauto: Run, controllers: Controllers, tmp_path: Path) -> int:
    pid, (token,) = create(fcauto)
    fcauto("join", "-u", "bob", "-t", token, "-p", str(pid))
    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    (tmp_path / "b.csv").write_text("x\n6\n")
    code, out, _ = fcauto(
        "contribute",
        "-u",
        "alice",
        "-p",
        str(pid),
        "-d",
        str(tmp_path / "a.csv"),
        "--controller",
        controllers("alice"),
    )
    assert code == 0 and "uploaded 1 file(s)" in out
    code, out, _ = fcauto(
        "contribute",
        "-u",
        "bob",
        "-p",
        str(pid),
        "-d",
        str(tmp_path / "b.csv"),
        "--controller",
        controllers("bob"),
        "--json",
    )
    assert code == 0 and json.loads(out)["actions"] == ["finalize"]
    return pid


def test_contribute_monitor_download(
    fcauto: Run, controllers: Controllers, tmp_path: Path, clock: FakeClock
) -> None:
    pid = full_run(fcauto, controllers, tmp_path)
    code, out, err = fcauto("monitor", "-u", "alice", "-p", str(pid), "-t", "60", "--interval", "1")
    assert code == 0 and out == f"Project {pid} status: finished\n"
    assert "running" in err
    assert max(clock.slept) <= 1.0  # polled at the requested interval
    out_dir = tmp_path / "dl"
    code, out, _ = fcauto(
        "download",
        "-u",
        "bob",
        "-p",
        str(pid),
        "-o",
        str(out_dir),
        "--controller",
        controllers("bob"),
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["run"] == 1 and len(data["logs"]) == 1 and len(data["results"]) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == [f"p{pid}_r1_s1.log", f"p{pid}_r1_s1.zip"]
    # a second run (contribute as coordinator resets the ended project): download takes run 2
    code, out, _ = fcauto(
        "contribute",
        "-u",
        "alice",
        "-p",
        str(pid),
        "-d",
        str(tmp_path / "b.csv"),
        "--controller",
        controllers("alice"),
        "--json",
    )
    assert json.loads(out)["actions"] == ["reset", "prepare", "finalize"]
    fcauto(
        "contribute",
        "-u",
        "bob",
        "-p",
        str(pid),
        "-d",
        str(tmp_path / "b.csv"),
        "--controller",
        controllers("bob"),
    )
    assert fcauto("monitor", "-u", "bob", "-p", str(pid))[0] == 0
    code, out, _ = fcauto(
        "download",
        "-u",
        "alice",
        "-p",
        str(pid),
        "-o",
        str(out_dir),
        "--controller",
        controllers("alice"),
    )
    assert code == 0 and out.startswith("run 2: 2 file(s)")


def test_monitor_times_out_in_prepare_and_shuts_down(
    fcauto: Run, web: FakeWeb, clock: FakeClock
) -> None:
    pid, _ = create(fcauto)
    fcauto("prep", "-u", "alice", "-p", str(pid))
    start = clock()
    code, out, err = fcauto("monitor", "-u", "alice", "-p", str(pid), "-t", "30", "--json")
    assert code == ExitCode.TIMEOUT == 6
    data = json.loads(out)
    assert data["timed_out"] and data["shut_down"] and data["status"] == "stopped"
    assert "did not finish within 30 s (status 'stopped'); the coordinator shut it down" in err
    assert 30 <= clock() - start <= 31
    assert web.project_status(pid) == "stopped"


def test_monitor_exits_nonzero_when_the_run_fails(
    fcauto: Run, controllers: Controllers, tmp_path: Path
) -> None:
    pid, _ = create(fcauto)
    (tmp_path / "bad.csv").write_text("1\nnot-a-number\n")
    fcauto(
        "contribute",
        "-u",
        "alice",
        "-p",
        str(pid),
        "-d",
        str(tmp_path / "bad.csv"),
        "--controller",
        controllers("alice"),
    )
    code, out, err = fcauto("monitor", "-u", "alice", "-p", str(pid))
    assert code == 5 and "ended 'failed'" in err and out == f"Project {pid} status: failed\n"


def test_list_apps_and_signup(fcauto: Run, web: FakeWeb, env_file: Path) -> None:
    code, out, _ = fcauto("list-apps")
    assert code == 0 and out.split() == ["ada-boost", "federated-svd", "mean-app", "random-forest"]
    with env_file.open("a") as fh:
        fh.write("dora@example.org=dora-long-password\n")
    code, out, _ = fcauto(
        "signup",
        "--email",
        "dora@example.org",
        "--first-name",
        "Dora",
        "--last-name",
        "D",
        "--site-name",
        "Dora Lab",
        "--city",
        "Bonn",
    )
    assert code == 0 and "registered site 'Dora Lab'" in out
    assert web.users["dora@example.org"].site is not None
    assert web.users["dora@example.org"].site["city"] == "Bonn"
    code, _, err = fcauto(
        "signup", "--email", "dora@example.org", "--first-name", "D", "--last-name", "D"
    )
    assert code == 5 and "already exists" in err


def test_429_is_waited_out_then_given_up(fcauto: Run, web: FakeWeb, clock: FakeClock) -> None:
    pid, _ = create(fcauto)
    web.inject(f"/api/projects/{pid}/", 429, times=1, headers={"Retry-After": "2"})
    code, out, err = fcauto("query", "-u", "alice", "-p", str(pid))
    assert (code, out) == (0, "ready\n") and 2.0 in clock.slept
    assert "rate-limited (HTTP 429)" in err
    web.inject(f"/api/projects/{pid}/", 429, times=10, headers={"Retry-After": "1"})
    code, _, err = fcauto("query", "-u", "alice", "-p", str(pid))
    assert code == 5 and "still rate-limited (HTTP 429) after 3 waits" in err


def test_5xx_is_retried_on_reads_only(fcauto: Run, web: FakeWeb) -> None:
    pid, _ = create(fcauto)
    web.inject(f"/api/projects/{pid}/", 503, times=2, method="GET")
    assert fcauto("query", "-u", "alice", "-p", str(pid))[:2] == (0, "ready\n")
    web.inject(f"/api/projects/{pid}/", 500, times=1, method="GET")
    code, _, err = fcauto("query", "-u", "alice", "-p", str(pid))
    assert code == 5 and "HTTP 500" in err
    web.inject("/api/projects/", 503, times=1, method="POST")
    code, _, err = fcauto("create", "-u", "alice", "-t", "mean-app")
    assert code == 5 and "HTTP 503 on POST /api/projects/" in err


def test_401_refreshes_once_then_stops(fcauto: Run, web: FakeWeb) -> None:
    pid, _ = create(fcauto)
    web.inject(f"/api/projects/{pid}/", 401, times=1)
    assert fcauto("query", "-u", "alice", "-p", str(pid))[0] == 0
    web.inject(f"/api/projects/{pid}/", 401, times=2)
    code, _, err = fcauto("query", "-u", "alice", "-p", str(pid))
    assert code == 5 and "still not authorised (HTTP 401) after refreshing" in err


def test_bad_input_exits_2(
    fcauto: Run, env_file: Path, web: FakeWeb, policy: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = fcauto("query", "-u", "dave", "-p", "1")
    assert code == 2 and "no password for FeatureCloud user 'dave'" in err
    assert main(["query", "-p", "1"]) == 2  # -u missing
    capsys.readouterr()
    assert (
        main(
            [
                "query",
                "-u",
                "alice",
                "-p",
                "1",
                "--env",
                str(env_file),
                "--url",
                "https://featurecloud.ai",
                "--rate",
                "50",
            ]
        )
        == 2
    )
    assert "allowed only against a local server" in capsys.readouterr().err
    code, _, err = fcauto("contribute", "-u", "alice", "-p", "1", "-d", "/no/such/file.csv")
    assert code == 2 and "no such file" in err


def test_wrong_password_and_loose_env_permissions(
    web: FakeWeb, tmp_path: Path, policy: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "loose.env"
    env.write_text("alice=definitely-wrong\n")
    env.chmod(0o644)
    code = main(
        ["query", "-u", "alice", "-p", "1", "--url", web.url, "--env", str(env)], policy=policy
    )
    out, err = capsys.readouterr()
    assert code == 5 and "refused the login of user 'alice'" in err
    assert "fcauto: warning:" in err and "chmod 600" in err
    assert "definitely-wrong" not in out + err


def test_environment_variables_pick_the_servers(
    web: FakeWeb,
    env_file: Path,
    policy: Policy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FEATURECLOUD_URL", web.url)
    monkeypatch.setenv("FEATURECLOUD_RATE", "200")
    assert main(["list-apps", "--json"], policy=policy) == 0
    assert "mean-app" in json.loads(capsys.readouterr().out)["apps"]
    assert policy.rate == 200


def test_verbose_logs_requests_but_no_secrets(fcauto: Run, web: FakeWeb) -> None:
    pid, (token,) = create(fcauto)
    code, _, err = fcauto("-v", "join", "-u", "bob", "-t", token, "-p", str(pid))
    assert code == 0 and "POST /api/project-tokens/ -> 200" in err
    secrets = [*web._access, *web._refresh, token]
    assert not any(s in err for s in secrets) and "Bearer" not in err
