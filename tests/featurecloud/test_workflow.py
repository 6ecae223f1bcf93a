"""``platform = "featurecloud"`` end to end against the fakes: three local sites, one controller each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedflow.errors import PlatformError, StudyError
from fedflow.featurecloud._http import Policy
from fedflow.featurecloud.fake import FakeClock, FakeController, FakeSiteOps, FakeWeb
from fedflow.featurecloud.ops import ProjectFailed, ProjectTimeout
from fedflow.featurecloud.workflow import Settings, default_data_dir, run_featurecloud
from fedflow.results.rundir import RunDirectory
from fedflow.study import load_study

from .conftest import USERS

NUMBERS = {"berlin": [1.0, 2.0, 3.0], "vienna": [10.0, 20.0], "rome": [4.5, 5.5, 6.0, 7.0]}
USER_OF = {"berlin": "alice", "vienna": "bob", "rome": "carol"}


def write_study(
    folder: Path,
    *,
    extra: str = "",
    controllers: dict[str, str] | None = None,
    bad: str | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".env").write_text("".join(f"{u}={p}\n" for u, p in USERS.items()))
    (folder / ".env").chmod(0o600)
    lines = ['name = "fc-mean"', 'platform = "featurecloud"', "timeout = 60", extra]
    for site, numbers in NUMBERS.items():
        data = folder / f"{site}.csv"
        data.write_text(
            "value\n"
            + "\n".join(str(x) for x in numbers)
            + "\n"
            + ("oops\n" if site == bad else "")
        )
        lines += [
            "[[clients]]",
            f'name = "{site}"',
            f'fc_username = "{USER_OF[site]}"',
            f'data = ["{data.name}"]',
            f"coordinator = {'true' if site == 'berlin' else 'false'}",
        ]
        if controllers:
            lines.append(f'controller = "{controllers[site]}"')
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    study_path: Path, web: FakeWeb, policy: Policy, ops: FakeSiteOps, out: Path, **kw: object
) -> dict:
    study = load_study(study_path)
    rd = RunDirectory.create(out, "x", out=out)
    settings = Settings(url=web.url, policy=policy, poll_interval=1.0, **kw)  # type: ignore[arg-type]
    return asyncio.run(run_featurecloud(study, rd, site_ops=ops, settings=settings))


def test_three_sites_with_a_new_project(web: FakeWeb, policy: Policy, tmp_path: Path) -> None:
    ops = FakeSiteOps(web.url)
    out = tmp_path / "run"
    summary = run(write_study(tmp_path / "study", extra='tool = "mean-app"'), web, policy, ops, out)
    assert summary["status"] == "finished" and summary["run"] == 1 and summary["created_project"]
    pid = summary["project_id"]
    everything = [x for xs in NUMBERS.values() for x in xs]
    for site in NUMBERS:
        result = json.loads((out / "sites" / site / "result.json").read_text())
        assert result["mean"] == pytest.approx(sum(everything) / len(everything))
        assert result["local"]["n"] == len(NUMBERS[site])
        assert (out / "logs" / f"{site}-run1-step1.log").is_file()
        assert "uploaded 1 file(s)" in (out / "logs" / f"{site}.log").read_text()
        assert sorted(summary["sites"][site]["files"]) == [
            f"sites/{site}/mean.txt",
            f"sites/{site}/result.json",
        ]
    assert sorted(ops.stopped) == sorted(NUMBERS)
    recorded = json.loads((out / "featurecloud.json").read_text())
    assert recorded["project_id"] == pid and recorded["status"] == "finished"
    assert web.project_status(pid) == "finished"
    assert sorted(web.projects[pid].participants) == ["alice", "bob", "carol"]
    assert (
        tmp_path / "study" / ".featurecloud" / "berlin" / "site_info.json"
    ).stat().st_mode & 0o077 == 0


def test_reusing_a_project_id_resets_it_and_runs_again(
    web: FakeWeb, policy: Policy, tmp_path: Path
) -> None:
    first = run(
        write_study(tmp_path / "s1", extra='tool = "mean-app"'),
        web,
        policy,
        FakeSiteOps(web.url),
        tmp_path / "r1",
    )
    pid = first["project_id"]
    second = run(
        write_study(tmp_path / "s2", extra=f"project_id = {pid}"),
        web,
        policy,
        FakeSiteOps(web.url),
        tmp_path / "r2",
    )
    assert second["project_id"] == pid and second["run"] == 2 and not second["created_project"]
    assert (tmp_path / "r2" / "sites" / "rome" / "result.json").is_file()


def test_a_failed_run_still_leaves_logs_and_stops_controllers(
    web: FakeWeb, policy: Policy, tmp_path: Path
) -> None:
    ops = FakeSiteOps(web.url)
    out = tmp_path / "run"
    with pytest.raises(ProjectFailed, match="ended 'failed'") as info:
        run(
            write_study(tmp_path / "study", extra='tool = "mean-app"', bad="vienna"),
            web,
            policy,
            ops,
            out,
        )
    assert info.value.summary["status"] == "failed"  # type: ignore[attr-defined]
    assert "is not a number" in (out / "logs" / "vienna-run1-step1.log").read_text()
    assert not (out / "sites" / "vienna" / "result.json").exists()
    assert json.loads((out / "featurecloud.json").read_text())["status"] == "failed"
    assert sorted(ops.stopped) == sorted(NUMBERS)


def test_timeout_shuts_the_project_down(policy: Policy, clock: FakeClock, tmp_path: Path) -> None:
    with FakeWeb(dict(USERS), rate_limit=None, run_seconds=10_000, clock=clock) as web:
        ops = FakeSiteOps(web.url)
        with pytest.raises(ProjectTimeout, match="did not finish within 20 s"):
            run(
                write_study(tmp_path / "study", extra='tool = "mean-app"'),
                web,
                policy,
                ops,
                tmp_path / "run",
                timeout=20,
            )
        pid = max(web.projects)
        assert web.project_status(pid) == "stopped"
        assert (tmp_path / "run" / "logs" / "rome-run1-step1.log").is_file()
        assert len(ops.stopped) == 3


def test_study_problems_are_caught_before_any_request(
    web: FakeWeb, policy: Policy, tmp_path: Path
) -> None:
    path = write_study(tmp_path / "study", extra='tool = "mean-app"')
    path.write_text(path.read_text().replace('fc_username = "carol"', ""))
    with pytest.raises(StudyError, match="site 'rome': fc_username is missing"):
        run(path, web, policy, FakeSiteOps(web.url), tmp_path / "r1")
    path = write_study(tmp_path / "study2", extra='tool = "mean-app"')
    (tmp_path / "study2" / ".env").write_text("alice=x\n")
    with pytest.raises(StudyError, match="no password for FeatureCloud user 'bob'"):
        run(path, web, policy, FakeSiteOps(web.url), tmp_path / "r2")
    assert not web.seen
    path = write_study(tmp_path / "study3", extra='tool = "no-such-app"')
    with pytest.raises(PlatformError, match="no app 'no-such-app'"):
        run(path, web, policy, FakeSiteOps(web.url), tmp_path / "r3")


@pytest.fixture
def live_web() -> Iterator[FakeWeb]:
    """A fake web API on the real clock with a real rate limit (the runtime path cannot inject)."""
    with FakeWeb(dict(USERS), rate_limit=40, run_seconds=0.3) as web:
        yield web


@pytest.fixture
def live_sites(
    live_web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Three fake controllers already running at the sites' default data folders; the runtime
    reuses them (as it would reuse real running controllers). Yields the controller URLs."""
    probe = load_study(write_study(tmp_path / "study", extra='tool = "mean-app"'))
    servers = {}
    for client in probe.clients:
        data_dir = default_data_dir(probe, client)
        data_dir.mkdir(parents=True)
        servers[client.name] = FakeController(live_web.url, data_dir)
        servers[client.name].start()
    monkeypatch.setenv("FEATURECLOUD_URL", live_web.url)
    monkeypatch.setenv("FEATURECLOUD_RATE", "20")
    monkeypatch.setenv("FEATURECLOUD_POLL", "0.1")
    yield {name: server.url for name, server in servers.items()}
    for server in servers.values():
        server.stop()


def test_fedflow_run_study_end_to_end(
    live_web: FakeWeb, live_sites: dict[str, str], tmp_path: Path
) -> None:
    from fedflow.runtime import run_study

    path = write_study(tmp_path / "study", extra='tool = "mean-app"', controllers=live_sites)
    result = run_study(load_study(path), out=tmp_path / "out")
    out = tmp_path / "out"
    assert result.status == "completed"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["platform"] == "featurecloud"
    phases = {p["name"] for p in json.loads((out / "metrics.json").read_text())["phases"]}
    assert {"featurecloud upload", "featurecloud run", "featurecloud download"} <= phases
    saved = json.loads((out / "result.json").read_text())
    assert saved["result"]["status"] == "finished"
    everything = [x for xs in NUMBERS.values() for x in xs]
    for site in NUMBERS:
        mean = json.loads((out / "sites" / site / "result.json").read_text())["mean"]
        assert mean == pytest.approx(sum(everything) / len(everything))
    ours = [
        s for s in live_web.seen if not s["path"].startswith("/api/fake/")
    ]  # not the controllers'
    assert ours and all(s["user_agent"].startswith("fedflow/") for s in ours)


def test_fedflow_run_cli_exits_5_when_the_platform_run_fails(
    live_sites: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedflow.cli import main

    path = write_study(
        tmp_path / "study", extra='tool = "mean-app"', controllers=live_sites, bad="rome"
    )
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 5
    assert "ended 'failed'" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "ProjectFailed"
    assert "is not a number" in (tmp_path / "out" / "logs" / "rome-run1-step1.log").read_text()
