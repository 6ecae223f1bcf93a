"""The FeatureCloud guide's stumbles: .env checked by validate as by run, the permission warning
as one line, the app's result shown instead of bookkeeping, controllers on the wrong folder."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest
from rich.console import Group

from fedflow.errors import PlatformError, StudyError
from fedflow.featurecloud._http import Policy
from fedflow.featurecloud.fake import FakeController, FakeSiteOps, FakeWeb
from fedflow.featurecloud.workflow import Settings, run_featurecloud
from fedflow.results.report import render_text, result_tables
from fedflow.results.rundir import RunDirectory
from fedflow.study import load_study
from fedflow.study.env import EnvPermissionWarning
from fedflow.validate import validate_study

from .test_workflow import NUMBERS, write_study


class Messages:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def run(
    study_path: Path, web: FakeWeb, policy: Policy, ops: Any, out: Path, observer: Any = None
) -> dict:
    study = load_study(study_path)
    rd = RunDirectory.create(out, "x", out=out)
    settings = Settings(url=web.url, policy=policy, poll_interval=1.0)

    async def go() -> dict:
        result = await run_featurecloud(
            study, rd, site_ops=ops, settings=settings, observer=observer
        )
        await asyncio.sleep(0)  # deliver the observer's last messages
        return result

    return asyncio.run(go())


def test_validate_needs_the_env_file_run_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = write_study(tmp_path / "study", extra='tool = "mean-app"')
    (study.parent / ".env").unlink()
    monkeypatch.chdir(study.parent)
    with pytest.raises(StudyError, match=r"no \.env with FeatureCloud passwords in ") as info:
        validate_study(study)
    assert str(info.value).count(str(study.parent)) == 1  # not "in X or X"


def test_validate_checks_every_password(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", extra='tool = "mean-app"')
    (study.parent / ".env").write_text("alice=pw\ncarol=pw\n")
    with pytest.raises(StudyError, match="no password for FeatureCloud user 'bob'"):
        validate_study(study)


def test_validate_lists_sites_and_warns_about_an_open_env_in_one_line(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", extra='tool = "mean-app"')
    (study.parent / ".env").chmod(0o644)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvPermissionWarning)
        report = validate_study(study)
    assert report.lines[0].startswith("berlin: FeatureCloud user 'alice' (coordinator)")
    assert any(line.startswith("warning: ") and "chmod 600" in line for line in report.lines)


def test_run_shows_the_apps_result_and_the_env_warning_as_a_line(
    web: FakeWeb, policy: Policy, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "study", extra='tool = "mean-app"')
    (study.parent / ".env").chmod(0o644)
    messages = Messages()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvPermissionWarning)
        summary = run(study, web, policy, FakeSiteOps(web.url), tmp_path / "run", messages)
    assert any("warning: " in m and "chmod 600" in m for m in messages.lines)
    everything = [x for xs in NUMBERS.values() for x in xs]
    assert summary["result"]["mean"] == pytest.approx(sum(everything) / len(everything))
    text = render_text(Group(*result_tables(summary)))
    first = text.splitlines()[0]
    assert first.startswith("mean-app result")
    assert "mean" in text and f"FeatureCloud project {summary['project_id']}: finished" in text
    assert "history" not in text and "created_project" not in text


class ElsewhereOps:
    """Controllers started by hand on folders of their own, as the guide once showed."""

    def __init__(self, web: FakeWeb, root: Path) -> None:
        self.web, self.root = web, root
        self.servers: list[FakeController] = []

    def start(self, site: Any, data_dir: Path) -> str:
        folder = self.root / f"fc-{site.name}"
        folder.mkdir(parents=True)
        server = FakeController(self.web.url, folder)
        server.start()
        self.servers.append(server)
        return server.url

    def stop(self, site: Any) -> None:
        pass


def test_a_controller_on_another_folder_is_told_which_folder(
    web: FakeWeb, policy: Policy, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "study", extra='tool = "mean-app"')
    ops = ElsewhereOps(web, tmp_path / "elsewhere")
    try:
        with pytest.raises(PlatformError) as info:
            run(study, web, policy, ops, tmp_path / "run")
    finally:
        for server in ops.servers:
            server.stop()
    expected = study.parent / ".featurecloud" / "berlin"
    assert f"--data-dir {expected}" in str(info.value)


def test_the_guide_starts_controllers_where_fedflow_writes_site_info() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "featurecloud.md").read_text()
    assert "--data-dir /tmp/fc-" not in guide
    assert "--data-dir .featurecloud/berlin" in guide
