"""``fedflow site check | approve | log``: the site operator's commands, through the real CLI."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedflow.errors import ExitCode
from fedflow.node.siteconfig import load_config, source_hash
from tests.helpers import fedflow

PLUGIN = '''"""A custom app a coordinator might send."""

from fedflow.apps.stats import Stats


class Mine(Stats):
    name = "mine"
'''


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A site folder with a configuration serving one dataset; returns the configuration."""
    data = tmp_path / "srv"
    data.mkdir()
    rows = "".join(f"{i},{(i * 7) % 11},{i % 2}\n" for i in range(12))
    (data / "cohort.csv").write_text("age,time,event\n" + rows)
    config = tmp_path / "etc" / "site-policy.toml"
    config.parent.mkdir()
    config.write_text(
        "min_count = 8\n"
        'allowed_apps = ["stats", "cox"]\n'
        'audit_log = "../state/audit.jsonl"\n'
        'outputs = "../outputs"\n'
        f'[datasets.cohort]\npath = "{data / "cohort.csv"}"\ncolumns = ["age", "event"]\n'
    )
    return config


def _env(tmp_path: Path) -> dict[str, str]:
    """No site configuration, state or data of the user running the tests."""
    return dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
        XDG_STATE_HOME=str(tmp_path / "home" / ".state"),
        XDG_DATA_HOME=str(tmp_path / "home" / ".data"),
        FEDFLOW_SITE_POLICY="",
    )


# -- check ---------------------------------------------------------------------------------------


def test_check_prints_what_the_site_offers(site: Path, tmp_path: Path) -> None:
    done = fedflow("site", "check", "--config", str(site), env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"site configuration: {site}" in out
    assert "min_count floor: 8" in out
    assert "built-in apps: cox, stats" in out
    assert "dataset cohort: 12 rows in cohort.csv; columns age, event" in out
    assert "time" not in out.split("dataset cohort:")[1]  # a column it does not offer
    assert "per-site outputs: stay at the site" in out
    assert f"audit log: {site.parent.parent / 'state' / 'audit.jsonl'}" in out


def test_check_reads_the_default_location(site: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["FEDFLOW_SITE_POLICY"] = str(site)
    done = fedflow("site", "check", env=env)
    assert done.returncode == 0 and "dataset cohort: 12 rows" in done.stdout


@pytest.mark.parametrize(
    ("text", "message", "code"),
    [
        ("min_cout = 3\n", "unknown key 'min_cout' (did you mean 'min_count'?)", ExitCode.SITE),
        ("min_count = 0\n", "key 'min_count' must be a positive integer", ExitCode.SITE),
        (
            'allowed_apps = ["stats", "nosuchapp"]\n',
            "names unknown app(s): nosuchapp",
            ExitCode.SITE,
        ),
        (
            '[datasets.x]\npath = "x.csv"\nsepp = ";"\n',
            "unknown key 'datasets.x.sepp'",
            ExitCode.SITE,
        ),
        ('[datasets.x]\npath = "absent.csv"\n', "absent.csv", ExitCode.INPUT),  # DataError
    ],
)
def test_check_refuses_a_bad_configuration_in_one_line(
    tmp_path: Path, text: str, message: str, code: int
) -> None:
    config = tmp_path / "site-policy.toml"
    config.write_text(text)
    done = fedflow("site", "check", "--config", str(config), env=_env(tmp_path))
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    if code == ExitCode.SITE:
        assert str(config) in lines[0]  # names the file


def test_site_without_subcommand_prints_help_and_exits_2(tmp_path: Path) -> None:
    done = fedflow("site", env=_env(tmp_path))
    assert done.returncode == ExitCode.INPUT and "check" in done.stdout and "approve" in done.stdout


# -- approve -------------------------------------------------------------------------------------


def test_approve_with_yes_shows_the_code_and_records_its_hash(site: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN)
    code = source_hash(PLUGIN.encode())
    done = fedflow(
        "site", "approve", str(plugin), "--config", str(site), "--yes", env=_env(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert "class Mine(Stats):" in done.stdout  # the operator sees what they approve
    assert f"sha256: {code}" in done.stdout
    assert load_config(site).approved_code == {code}
    copy = site.parent / "approved" / f"{code.partition(':')[2]}.py"
    assert copy.read_text() == PLUGIN
    checked = fedflow("site", "check", "--config", str(site), env=_env(tmp_path))
    assert f"approved code: {code} (stored)" in checked.stdout
    # approving again changes nothing
    again = fedflow("site", "approve", str(plugin), "--config", str(site), "--yes")
    assert again.returncode == 0 and load_config(site).approved_code == {code}
    assert site.read_text().count("approved_code") == 1


def test_approve_without_a_terminal_or_yes_refuses_and_records_nothing(
    site: Path, tmp_path: Path
) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN)
    before = site.read_text()
    done = subprocess.run(
        [sys.executable, "-m", "fedflow", "site", "approve", str(plugin), "--config", str(site)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert done.returncode == ExitCode.INPUT
    assert "class Mine(Stats):" in done.stdout and "sha256:" in done.stdout
    assert done.stderr.strip().splitlines() == [
        "fedflow: error: not approved: no terminal to confirm on "
        "(read the code above, then add --yes)"
    ]
    assert site.read_text() == before and not (site.parent / "approved").exists()


def _on_terminal(args: list[str], answer: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answer its question; return (exit code, screen)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedflow", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    screen = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        if not answered and b"[y/N]" in screen:
            os.write(master, answer.encode() + b"\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    os.close(master)
    return proc.wait(10), screen.decode("utf-8", "replace")


@pytest.mark.parametrize("answer", ["y", "n", ""])
def test_approve_on_a_terminal_asks_first(site: Path, tmp_path: Path, answer: str) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN)
    code = source_hash(PLUGIN.encode())
    status, screen = _on_terminal(
        ["site", "approve", str(plugin), "--config", str(site)], answer, _env(tmp_path)
    )
    assert "class Mine(Stats):" in screen and f"sha256: {code}" in screen
    assert "to run at this site? [y/N]" in screen
    if answer == "y":
        assert status == 0 and load_config(site).approved_code == {code}
        assert f"approved mine.py: {code}" in screen
    else:
        assert status == ExitCode.INPUT and "not approved; nothing recorded" in screen
        assert load_config(site).approved_code == frozenset()


def test_approve_refuses_an_unreadable_file_and_a_broken_configuration(
    site: Path, tmp_path: Path
) -> None:
    done = fedflow("site", "approve", str(tmp_path / "absent.py"), "--config", str(site), "--yes")
    assert done.returncode == ExitCode.SITE
    assert done.stderr.strip().splitlines() == [
        f"fedflow: error: cannot read {tmp_path / 'absent.py'}: No such file or directory"
    ]
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN)
    site.write_text("min_count = 8\nbogus = 1\n")
    done = fedflow("site", "approve", str(plugin), "--config", str(site), "--yes")
    assert done.returncode == ExitCode.SITE and "unknown key 'bogus'" in done.stderr
    assert site.read_text() == "min_count = 8\nbogus = 1\n"  # never edited


# -- log -----------------------------------------------------------------------------------------


def _serve_one_study(site: Path, tmp_path: Path) -> None:
    """Drive a bare agent through one refused and one answered study (its audit log fills)."""
    from fedflow._version import __version__
    from fedflow.wire import PROTOCOL_VERSION, Finish, Hello, Prepare, Setup
    from tests.node.test_defended import Site

    for setup, app in (
        (Setup(dataset="cohort", study="probe", min_count=8), "kmeans"),
        (Setup(dataset="cohort", study="census", min_count=8), "stats"),
    ):
        agent = Site(tmp_path, "--config", str(site))
        agent.ask(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
        agent.ask(setup)
        agent.ask(Prepare(app=app, params={"columns": ["age"]}, columns={"age": "numeric"}))
        agent.ask(Finish(status="completed"))
        agent.close()


def test_log_shows_requests_and_verify_checks_the_chain(site: Path, tmp_path: Path) -> None:
    _serve_one_study(site, tmp_path)
    env = _env(tmp_path)
    log = site.parent.parent / "state" / "audit.jsonl"
    shown = fedflow("site", "log", "--config", str(site), env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert len(lines) == len(log.read_text().splitlines()) == 6  # setup, prepare, finish × 2
    assert any("probe prepare kmeans refused — this site does not allow app" in x for x in lines)
    assert any("census prepare stats answered" in x for x in lines)
    verified = fedflow("site", "log", "--verify", "--config", str(site), env=env)
    assert verified.returncode == 0
    assert verified.stdout.strip() == f"{log}: 6 line(s), chain intact"

    # an edited line breaks the chain at the next one
    entries = log.read_text().splitlines()
    edited = json.loads(entries[1])
    edited["outcome"] = "answered"
    entries[1] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(entries) + "\n")
    broken = fedflow("site", "log", "--verify", "--config", str(site), env=env)
    assert broken.returncode == ExitCode.SITE
    assert broken.stderr.strip().splitlines() == [
        f"fedflow: error: {log}: line 3 does not chain to the line before (edited or removed)"
    ]
    # a line that is not JSON: shown as such, and the chain breaks there
    log.write_text("\n".join(entries[:2] + ["garbage"] + entries[3:]) + "\n")
    shown = fedflow("site", "log", "--config", str(site), env=env)
    assert shown.returncode == 0 and "line 3: not a log entry" in shown.stdout
    broken = fedflow("site", "log", "--verify", "--config", str(site), env=env)
    assert broken.returncode == ExitCode.SITE and "line 3 not a JSON line" in broken.stderr


def test_log_before_any_request(site: Path, tmp_path: Path) -> None:
    done = fedflow("site", "log", "--verify", "--config", str(site), env=_env(tmp_path))
    assert done.returncode == 0 and "no requests logged yet" in done.stdout
