"""Faults in real site processes: a plan whose local training kills its own site's agent once, or
sleeps far beyond ``round_timeout``, run through ``fedflow run`` on forked local sites.

The fault is chosen by the plan itself, with files in a folder the test owns: each site process
counts its trainings (one per round: every site trains every round), and at training ``AT`` the
first ``COUNT`` processes to get there (``O_CREAT | O_EXCL`` on a marker, so exactly that many,
whichever sites they are) die with ``os._exit`` or sleep. A restarted agent is a new process with
a fresh count and finds the markers taken, so each fault happens once. The plan trains exactly as
``torch.optim.SGD(parameters, lr)``, the default, so a run without faults gives the bytes of the
in-memory run of the same plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from fedflow.runtime.run import run_study  # noqa: E402
from fedflow.runtime.simulate import simulate  # noqa: E402
from fedflow.study import load_study  # noqa: E402

from .helpers import MLP_PLAN, blobs, write_plan  # noqa: E402

SIZES = [50, 35, 60]

FAULT = """

import os
import time

MARKS = {marks!r}
ACTION = {action!r}
AT = {at}
COUNT = {count}


def optimizer(parameters, lr):
    calls = os.path.join(MARKS, f"calls-{{os.getpid()}}")
    with open(calls, "a") as fh:
        fh.write(".")
    if os.path.getsize(calls) == AT:
        for i in range(COUNT):
            try:
                fd = os.open(os.path.join(MARKS, f"acted-{{i}}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            if ACTION == "die":
                os._exit(17)
            time.sleep(600)
            break
    return torch.optim.SGD(parameters, lr=lr)
"""


def _study(folder: Path, action: str, at: int, count: int = 1, **params: object) -> Path:
    marks = folder / "marks"
    marks.mkdir()
    plan = MLP_PLAN + FAULT.format(marks=str(marks), action=action, at=at, count=count)
    write_plan(folder, plan)
    clients = []
    for name, table in blobs(SIZES).items():
        table.to_pandas().to_csv(folder / f"{name}.csv", index=False)
        clients.append(f'[[clients]]\nname = "{name}"\ndata = ["{name}.csv"]\n')
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
    (folder / "study.toml").write_text(
        'name = "faults"\napp = "train"\nseed = 8\n'
        '[params]\nplan = "plan.py"\ntarget = "label"\nrounds = 3\nlr = 0.1\nbatch_size = 16\n'
        'metric = "accuracy"\n' + extra + "".join(clients)
    )
    return folder / "study.toml"


def _events(run_dir: Path) -> list[tuple[int, str, str]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [(e["round"], e["site"], e["event"]) for e in metrics.get("round_events", [])]


def _acted(folder: Path) -> list[int]:
    """The process ids that injected their fault."""
    return [int(p.read_text()) for p in sorted((folder / "marks").glob("acted-*"))]


def _gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"):
            return True  # exited, not yet reaped
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_site_process_that_dies_is_restarted_resent_its_task_and_changes_nothing(
    tmp_path: Path,
) -> None:
    study = load_study(_study(tmp_path, "die", at=2, retries=1))
    run = run_study(study, out=tmp_path / "run", command=[])
    assert run.status == "completed"
    (pid,) = _acted(tmp_path)
    events = _events(run.dir)
    assert [(r, e) for r, _, e in events] == [(2, "failed"), (2, "restarted")]
    victim = events[0][1]
    assert events[1][1] == victim
    metrics = json.loads((run.dir / "metrics.json").read_text())
    failed = metrics["round_events"][0]["detail"]
    assert "exit status 17" in failed or "exited" in failed, failed
    # the restarted agent is another process, and the one that died is gone
    assert _gone(pid)
    history = json.loads((run.dir / "result.json").read_text())["result"]["history"]
    assert history[2]["answered"] == list(blobs(SIZES))
    # the retried round gives the bytes of the same plan run in memory without any fault
    (tmp_path / "marks" / "acted-0").write_text("taken")
    params = {**study.params, "plan": str(tmp_path / "plan.py")}
    clean = simulate("train", params, blobs(SIZES), seed=8)
    for name in ("model-last.safetensors", "model-best.safetensors"):
        assert (run.dir / name).read_bytes() == clean.done.artifacts[name], name


@pytest.mark.slow
def test_a_slow_site_process_is_cut_off_by_round_timeout_and_back_next_round(
    tmp_path: Path,
) -> None:
    # round 1 includes each site's import of torch (about 7 s for three sites on two idle
    # cores, over 40 s under heavy load): the timeout leaves room for it
    study = load_study(_study(tmp_path, "sleep", at=2, round_timeout=30.0, min_sites=2))
    started = time.monotonic()
    run = run_study(study, out=tmp_path / "run", command=[])
    elapsed = time.monotonic() - started
    assert run.status == "completed"
    assert elapsed < 300  # the 600 s sleep was not waited for
    (pid,) = _acted(tmp_path)
    events = _events(run.dir)
    slow = events[0][1]
    assert events[:2] == [(2, slow, "timed out"), (2, slow, "left out")]
    assert (3, slow, "restarted") in events
    assert _gone(pid), "the straggler's process was left running"
    result = json.loads((run.dir / "result.json").read_text())["result"]
    others = [s for s in blobs(SIZES) if s != slow]
    assert result["history"][2]["answered"] == others
    assert sorted(result["history"][2]["sites"]) == others
    assert result["history"][3]["answered"] == list(blobs(SIZES))
    assert any(f"aggregated without {slow}" in note for note in run.notes)
    # the round without the straggler: not the bytes of the run without a fault
    (tmp_path / "marks" / "acted-0").write_text("taken")
    params = {**study.params, "plan": str(tmp_path / "plan.py")}
    clean = simulate("train", params, blobs(SIZES), seed=8)
    name = "model-last.safetensors"
    assert (run.dir / name).read_bytes() != clean.done.artifacts[name]


@pytest.mark.slow
def test_below_the_quorum_fedflow_run_fails_in_one_line_naming_the_round(tmp_path: Path) -> None:
    _study(tmp_path, "die", at=1, count=2, min_sites=2)
    done = subprocess.run(
        [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", "run", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("fedflow: error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    (survivor,) = [s for s in blobs(SIZES) if f"({s})" in errors[0]]
    assert errors[0] == (
        "fedflow: error: app 'train': round 1: 1 of the 3 sampled sites answered "
        f"({survivor}), fewer than min_sites = 2"
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    events = _events(tmp_path / "run")
    assert sorted(e for _, _, e in events) == ["failed", "failed", "left out", "left out"]
    assert survivor not in {s for _, s, _ in events}
    assert not (tmp_path / "run" / "model-last.safetensors").exists()
