"""The real ``fedflow`` command end to end on local sites (each site its own process)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from tests.helpers import ROOT, copy_quickstart, fedflow, write_study


def env_with_tests() -> dict[str, str]:
    """Let site processes import ``tests.plugins`` (a plug-in app given as module:Class)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_quickstart_with_compare(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    proc = fedflow("run", str(study), "--compare", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(tmp_path / "run")
    assert any(line.split()[0] == "intercept" for line in lines if line.split())
    assert "compare: matches statsmodels" in proc.stdout
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    for site in ("berlin", "vienna", "zurich"):
        log = (tmp_path / "run" / "logs" / f"{site}.log").read_text()
        assert ("loaded" in log or "checked (streamed)" in log) and "run completed" in log
        pid = manifest["sites"][site]["pid"]
        assert pid and not Path(f"/proc/{pid}").exists(), f"site process {site} outlived the run"


def test_json_output_and_legacy_alias(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    proc = fedflow("-c", str(study), "--json", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["app"] == "logistic-regression"
    assert set(result["result"]["std_errors"]) >= {"intercept", "radius"}


def test_template_is_a_valid_study_once_data_exists(tmp_path: Path) -> None:
    proc = fedflow("-t")
    assert proc.returncode == 0
    parsed = tomllib.loads(proc.stdout)
    assert parsed["app"] == "logistic-regression" and len(parsed["clients"]) == 2
    assert fedflow("template", str(tmp_path / "s.toml")).returncode == 0
    assert fedflow("template", str(tmp_path / "s.toml")).returncode != 0  # no silent overwrite


def test_validate_checks_data_without_running(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    proc = fedflow("validate", str(study))
    assert proc.returncode == 0, proc.stderr
    assert "berlin: 280 usable rows" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_apps_lists_the_builtin_apps() -> None:
    proc = fedflow("apps")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert {"stats", "linear-regression", "logistic-regression"} <= set(names)


CSV = "x,y,g\n" + "".join(f"{i},{(3 * i) % 7 + 0.5},{'ab'[i % 2]}\n" for i in range(12))


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("malformed", 2, "malformed TOML"),
        ("unknown-key", 2, "unknown key 'clients[1].hostnme' (did you mean 'hostname'?)"),
        ("wrong-type", 2, "min_count: input should be a valid integer"),
        ("duplicate", 2, "duplicate site name 'a'"),
        ("missing-file", 2, "does not exist"),
        ("empty-file", 2, "empty.csv is empty"),
        ("missing-column", 2, "site 'b': column 'y' is missing in b.csv"),
        ("non-numeric", 2, "column 'g' is not numeric"),
        ("missing-values", 2, "site 'b': b.csv: column 'y' has 1 missing value(s)"),
        ("min-count", 2, "fewer than min_count = 50"),
        ("unknown-app", 2, "unknown app 'linear-regresion' (did you mean 'linear-regression'?)"),
        ("bad-param", 2, "params: unknown key 'taget' (did you mean 'target'?)"),
        ("no-such-study", 2, "no such study file"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    tmp_path: Path, case: str, code: int, message: str
) -> None:
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.csv").write_text(CSV)
    (tmp_path / "empty.csv").write_text("")
    body = 'app = "stats"\n'
    sites = {"a": "a.csv", "b": "b.csv"}
    if case == "malformed":
        body = 'app = "stats\n'
    elif case == "unknown-key":
        body += '[[clients]]\nname = "x"\ndata = ["a.csv"]\nhostnme = "h"\n'
    elif case == "wrong-type":
        body += 'min_count = "five"\n'
    elif case == "duplicate":
        sites = {}
        body += (
            '[[clients]]\nname = "a"\ndata = ["a.csv"]\n[[clients]]\nname = "a"\ndata = ["b.csv"]\n'
        )
    elif case == "missing-file":
        sites["b"] = "nope.csv"
    elif case == "empty-file":
        sites["b"] = "empty.csv"
    elif case == "missing-column":
        (tmp_path / "b.csv").write_text(CSV.replace(",y,", ",z,"))
        body = 'app = "linear-regression"\n[params]\ntarget = "y"\nfeatures = ["x"]\n'
    elif case == "non-numeric":
        body = 'app = "stats"\n[params]\ncolumns = ["x", "g"]\n'
    elif case == "missing-values":
        (tmp_path / "b.csv").write_text(CSV.replace("\n3,2.5,", "\n3,NA,"))
        body = 'app = "stats"\n[params]\ncolumns = ["y"]\n'
    elif case == "min-count":
        body += "min_count = 50\n"
    elif case == "unknown-app":
        body = 'app = "linear-regresion"\n'
    elif case == "bad-param":
        body = 'app = "linear-regression"\n[params]\ntaget = "y"\n'
    study = write_study(tmp_path, body, sites)
    if case == "no-such-study":
        study = tmp_path / "missing.toml"
    proc = fedflow("run", str(study), "--out", str(tmp_path / "run"))
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedflow: error:")]
    assert len(errors) == 1, proc.stderr
    assert message in errors[0], errors[0]
    assert "Traceback" not in proc.stderr


def test_missing_values_can_be_dropped(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.csv").write_text(CSV.replace("\n3,2.5,", "\n3,,"))
    study = write_study(
        tmp_path,
        'app = "stats"\ndropna = true\n[params]\ncolumns = ["y"]\n',
        {"a": "a.csv", "b": "b.csv"},
    )
    proc = fedflow("run", str(study), "--json", "--out", str(tmp_path / "run"), "--compare")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"]["y"]["count"] == 23


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("crash", "exit status 17"),
        ("raise", "ValueError: boom at the site"),
        ("hang", "no answer within 1 s"),
    ],
)
def test_a_failing_site_process_ends_the_run_promptly(
    tmp_path: Path, mode: str, expected: str
) -> None:
    copy_quickstart(tmp_path)
    body = f'app = "tests.plugins:Faulty"\ntimeout = 1\n[params]\nmode = "{mode}"\n'
    study = write_study(
        tmp_path,
        body,
        {"berlin": "berlin.csv", "vienna": "vienna.csv", "zurich": "zurich.csv"},
        name="faulty.toml",
    )
    proc = fedflow(
        "run", str(study), "--out", str(tmp_path / "run"), env=env_with_tests(), timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert "site 'vienna'" in proc.stderr and expected in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["site"] == "vienna"
    for site in manifest["sites"].values():
        assert not Path(f"/proc/{site['pid']}").exists()


def test_comparison_mismatch_exits_4(tmp_path: Path) -> None:
    copy_quickstart(tmp_path)
    # a plug-in whose federated count is right but whose twin counts differently
    plugin = tmp_path / "mismatch_plugin.py"
    plugin.write_text(
        "from tests.plugins import Faulty\n"
        "class Off(Faulty):\n"
        "    name = 'mismatch_plugin:Off'\n"
        "    def centralized(self, pooled, params):\n"
        "        return {'n': len(pooled) + 1}\n"
    )
    body = 'app = "mismatch_plugin:Off"\n[params]\nsite = "none"\n'
    study = write_study(
        tmp_path, body, {"berlin": "berlin.csv", "vienna": "vienna.csv"}, name="off.toml"
    )
    env = env_with_tests()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = fedflow("run", str(study), "--compare", "--out", str(tmp_path / "run"), env=env)
    assert proc.returncode == 4, proc.stderr
    assert "MISMATCH" in proc.stdout
    comparison = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert comparison["status"] == "mismatch" and comparison["items"][0]["path"] == "n"


def test_a_busy_site_exits_when_the_coordinator_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    copy_quickstart(tmp_path)
    body = 'app = "tests.plugins:Faulty"\ntimeout = 120\n[params]\nmode = "hang"\nround = 1\n'
    study = write_study(tmp_path, body, {"vienna": "vienna.csv"}, name="hang.toml")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedflow.cli",
            "run",
            str(study),
            "--out",
            str(tmp_path / "run"),
            "-q",
        ],
        env=env_with_tests(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "run" / "logs" / "vienna.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "prepared app" not in (
        log.read_text() if log.exists() else ""
    ):
        time.sleep(0.1)
    pid = int(log.read_text().split("pid ")[1].split(")")[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    alive = (
        Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    )
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the site process outlived its killed coordinator"


def test_sites_as_fresh_interpreters_when_the_fork_server_is_off(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    env = dict(os.environ, FEDFLOW_FORKSERVER="0")
    proc = fedflow("run", str(study), "--json", "--out", str(tmp_path / "run"), env=env)
    assert proc.returncode == 0, proc.stderr
    forked = fedflow("run", str(study), "--json", "--out", str(tmp_path / "run2"))
    assert json.loads(proc.stdout)["result"] == json.loads(forked.stdout)["result"]


def test_the_sites_own_policy_file_refuses_apps(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    policy = tmp_path / "site-policy.toml"
    policy.write_text('allowed_apps = ["stats"]\n')
    env = dict(os.environ, FEDFLOW_SITE_POLICY=str(policy))
    proc = fedflow("run", str(study), "--out", str(tmp_path / "run"), env=env)
    assert proc.returncode == 3, proc.stderr
    assert (
        "refused by the site's policy: this site does not allow app 'logistic-regression'"
        in proc.stderr
    )
    log = (tmp_path / "run" / "logs" / "berlin.log").read_text()
    assert "owned site: apps stats" in log
