"""A newcomer's first hour: the stumbles a fresh user met with the CLI and the Python API."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import fedflow as fedflow_api
from fedflow.apps.linear import LinearRegression
from tests.helpers import ROOT, copy_quickstart, fedflow, write_study


def closed_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_remote_site_is_one_line_without_a_fork_server_traceback(
    tmp_path: Path,
) -> None:
    copy_quickstart(tmp_path)
    study = write_study(tmp_path, 'app = "stats"\n', {"berlin": "berlin.csv"})
    with study.open("a") as f:
        f.write(
            f'\n[[clients]]\nname = "far"\ndata = ["vienna.csv"]\n'
            f'hostname = "127.0.0.1"\nport = {closed_port()}\n'
        )
    for _ in range(3):  # the fork server's race showed up every time; check a few
        proc = fedflow("run", str(study), "--out", str(tmp_path / "run"), "--force", "-q")
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
        errors = proc.stderr.strip().splitlines()
        assert len(errors) == 1 and "site 'far': cannot connect" in errors[0], proc.stderr


LINEAR = 'app = "linear-regression"\n[params]\ntarget = "malignant"\nfeatures = ["radius"]\n'


def linear_study(folder: Path, sites: tuple[str, ...] = ("berlin", "vienna")) -> Path:
    """A small quickstart-data study (linear regression) with the given sites."""
    copy_quickstart(folder)
    return write_study(folder, LINEAR, {s: f"{s}.csv" for s in sites}, name="linear.toml")


# -- 2: --debug keeps the exit code and the run directory line -----------------------------------
def test_debug_adds_the_traceback_and_changes_nothing_else(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    study.write_text(study.read_text().replace('"vienna.csv"', '"nope.csv"'))
    run = fedflow("run", str(study), "--out", str(tmp_path / "run"), "-q", "--debug")
    assert run.returncode == 2, run.stderr
    assert "Traceback" in run.stderr and "no running event loop" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("fedflow: error: site 'vienna'")
    assert run.stdout.strip().splitlines()[-1] == str(tmp_path / "run")
    check = fedflow("validate", str(study), "--debug")
    assert check.returncode == 2 and "Traceback" in check.stderr, check.stderr


# -- 3: template over an existing file -----------------------------------------------------------
def test_template_over_an_existing_file_is_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "study.toml"
    target.write_text("mine\n")
    proc = fedflow("template", str(target))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"fedflow: error: {target} exists (use --force to overwrite it)"
    assert target.read_text() == "mine\n"
    assert fedflow("template", str(target), "--force").returncode == 0
    assert "[[clients]]" in target.read_text()


# -- 4: file system trouble is bad input, not a bug ----------------------------------------------
def test_a_symlink_loop_in_data_is_bad_input(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    study.write_text(study.read_text().replace('"vienna.csv"', '"loop.csv"'))
    for command in ("run", "validate"):
        proc = fedflow(
            command, str(study), *(("--out", str(tmp_path / "r")) if command == "run" else ())
        )
        assert proc.returncode == 2, proc.stderr
        assert "client 'vienna'" in proc.stderr and "loop.csv" in proc.stderr
        assert "internal error" not in proc.stderr


def test_an_out_folder_that_cannot_be_made_is_bad_input(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    (tmp_path / "afile").write_text("")
    proc = fedflow("run", str(study), "--out", str(tmp_path / "afile" / "run"), "-q")
    assert proc.returncode == 2, proc.stderr
    assert "cannot create the folder" in proc.stderr and "internal error" not in proc.stderr


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into any folder"
)
def test_force_over_an_unwritable_logs_folder_is_bad_input(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "old.log").write_text("old")
    (out / "logs").chmod(0o500)
    try:
        proc = fedflow("run", str(study), "--out", str(out), "--force", "-q")
    finally:
        (out / "logs").chmod(0o700)
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr


# -- 6: SIGINT and SIGTERM end a run the same way ------------------------------------------------
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_is_recorded_and_its_sites_end(
    tmp_path: Path, signum: int, code: int
) -> None:
    copy_quickstart(tmp_path)
    # vienna hangs in its first round (a test plug-in): a run that never finishes by itself
    body = 'app = "tests.plugins:Faulty"\ntimeout = 120\n[params]\nmode = "hang"\nround = 1\n'
    study = write_study(
        tmp_path, body, {"berlin": "berlin.csv", "vienna": "vienna.csv"}, name="hang.toml"
    )
    out = tmp_path / "run"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedflow", "run", str(study), "--out", str(out), "-q", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log = out / "logs" / "vienna.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "prepared app" not in (
        log.read_text() if log.exists() else ""
    ):
        time.sleep(0.05)
    time.sleep(0.2)  # the round's task is on its way: the site is now busy in it
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "fedflow: interrupted"
    doc = json.loads(stdout)
    assert doc["status"] == "interrupted" and doc["exit_code"] == code
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["finished"]
    assert manifest["error"]["message"] == f"interrupted by {signal.Signals(signum).name}"
    for site in manifest["sites"].values():
        pid = site["pid"]
        alive = (
            Path(f"/proc/{pid}").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        )
        assert not alive, f"site process {pid} outlived the interrupted run"


# -- 8: --compare without the reference libraries is refused before the run ----------------------
def test_compare_checks_the_reference_libraries_first(tmp_path: Path) -> None:
    from fedflow.errors import StudyError
    from fedflow.runtime.run import check_study

    study = fedflow_api.load_study(linear_study(tmp_path))
    with pytest.raises(StudyError, match=r"needs statsmodels, which cannot be imported: pip"):
        check_study(study, compare=True, importable=lambda module: module != "statsmodels")
    assert check_study(study, compare=True) is not None  # installed here
    with pytest.raises(StudyError, match="needs fedflow_no_such_library"):
        fedflow_api.run(
            study, app="tests.test_newcomer:NoReference", out=tmp_path / "run", compare=True
        )
    assert not (tmp_path / "run").exists(), "the run started before the check"


class NoReference(LinearRegression):
    """Linear regression whose reference library is not installed anywhere."""

    reference = "fedflow_no_such_library OLS"


# -- 9: a federation of one -----------------------------------------------------------------------
def test_a_one_site_study_warns(tmp_path: Path) -> None:
    study = linear_study(tmp_path, ("berlin",))
    proc = fedflow("run", str(study), "--out", str(tmp_path / "run"), "-q")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("fedflow: warning:")]
    assert len(warnings) == 1 and "a federation of one is no federation" in warnings[0]
    notes = json.loads((tmp_path / "run" / "result.json").read_text())["notes"]
    assert any("federation of one" in note for note in notes)
    with pytest.warns(UserWarning, match="federation of one"):
        fedflow_api.run(study, out=tmp_path / "api", progress=False)


# -- 10: --force never mixes two runs --------------------------------------------------------------
def test_force_clears_what_the_earlier_run_wrote(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    out = tmp_path / "run"
    assert fedflow("run", str(study), "--out", str(out), "--compare", "-q").returncode == 0
    assert (out / "comparison.json").exists()
    (out / "logs" / "ghost.log").write_text("from an earlier study")
    (out / "notes.txt").write_text("the user's own file")
    proc = fedflow("run", str(study), "--out", str(out), "--force", "-q")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "comparison.json").exists()
    assert not (out / "logs" / "ghost.log").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert "comparison" not in json.loads((out / "manifest.json").read_text())


# -- 11: the run directory's study.toml repeats the run ---------------------------------------------
def test_the_run_directory_study_is_the_study_as_run(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    run = fedflow_api.run(study, seed=7, out=tmp_path / "run", progress=False)
    copied = tomllib.loads((run.dir / "study.toml").read_text())
    assert copied["seed"] == 7 and copied["name"] == "linear"
    assert all(Path(p).is_absolute() for c in copied["clients"] for p in c["data"])
    original = (run.dir / "study.original.toml").read_text()
    assert original == study.read_text()
    assert run.manifest["study"]["sha256"] == hashlib.sha256(original.encode()).hexdigest()
    assert "seed=7" in run.manifest["command"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = fedflow(
        "run",
        str(run.dir / "study.toml"),
        "--json",
        "--out",
        str(tmp_path / "again"),
        cwd=elsewhere,
    )
    assert again.returncode == 0, again.stderr
    repeated = json.loads(again.stdout)
    assert repeated["result"] == json.loads((run.dir / "result.json").read_text())["result"]
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["seed"] == 7


# -- 12: --json is always one JSON document; the run directory is absolute -------------------------
def test_json_names_the_run_directory_and_status(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    ok = fedflow("run", str(study), "--json", "--out", "relout", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["run_dir"] == str(tmp_path / "relout") and doc["status"] == "completed"
    assert doc["exit_code"] == 0 and doc["app"] == "linear-regression" and doc["result"]
    plain = fedflow("run", str(study), "--out", "relout2", "-q", cwd=tmp_path)
    assert plain.stdout.strip().splitlines()[-1] == str(tmp_path / "relout2")
    study.write_text(study.read_text().replace('"vienna.csv"', '"nope.csv"'))
    bad = fedflow("run", str(study), "--json", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2
    doc = json.loads(bad.stdout)
    assert doc["run_dir"] == str(tmp_path / "bad") and doc["status"] == "failed"
    assert doc["exit_code"] == 2 and doc["error"]["site"] == "vienna"
    early = fedflow("run", str(tmp_path / "missing.toml"), "--json")
    assert early.returncode == 2 and json.loads(early.stdout)["run_dir"] is None


# -- 20: a plain REPL --------------------------------------------------------------------------------
def test_the_package_in_a_plain_repl(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert {"run", "Run", "Study", "load_study", "FedflowError"} <= set(dir(fedflow_api))
    assert "Any" not in dir(fedflow_api) and "annotations" not in dir(fedflow_api)
    proc = subprocess.run(
        [sys.executable, "-m", "fedflow", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("fedflow ")
    study = linear_study(tmp_path)
    run = fedflow_api.run(study, out=tmp_path / "run", progress=True)
    shown = repr(run)
    assert len(shown) < 200 and shown.startswith("<Run completed linear-regression")
    assert str(run.dir) in shown
    assert "round" in capfd.readouterr().err  # progress on stderr when asked
    fedflow_api.run(study, out=tmp_path / "quiet")  # stderr is not a terminal here: no progress
    assert capfd.readouterr().err == ""


# -- further stumbles ------------------------------------------------------------------------------
def test_a_folder_holding_the_study_is_accepted(tmp_path: Path) -> None:
    linear_study(tmp_path)
    (tmp_path / "study.toml").unlink()  # linear.toml is now the folder's only .toml file
    proc = fedflow("validate", str(tmp_path))
    assert proc.returncode == 0 and "linear.toml is valid" in proc.stdout, proc.stderr
    run = fedflow_api.run(tmp_path, out=tmp_path / "run", progress=False)
    assert run.status == "completed"
    (tmp_path / "other.toml").write_text("")
    proc = fedflow("run", str(tmp_path))
    assert proc.returncode == 2
    assert (
        f"{tmp_path} is a folder, not a study file (it holds linear.toml, other.toml" in proc.stderr
    )


def test_validate_warns_about_a_single_site(tmp_path: Path) -> None:
    proc = fedflow("validate", str(linear_study(tmp_path, ("berlin",))))
    assert proc.returncode == 0
    assert proc.stderr.startswith("fedflow: warning: a federation of one is no federation")


def test_a_misspelt_api_keyword_is_named_with_a_suggestion(tmp_path: Path) -> None:
    study = linear_study(tmp_path)
    with pytest.raises(
        fedflow_api.FedflowError, match=r"unknown keyword compre=true \(did you mean compare="
    ):
        fedflow_api.run(study, compre=True)
    assert not (tmp_path / "results").exists()
