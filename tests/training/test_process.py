"""Training through real site processes: the same bytes as in memory, and a clear message when
torch is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from fedflow.errors import AppError
from fedflow.study import load_study

from .helpers import MLP_PLAN, blobs, write_plan


def _study(folder: Path) -> Path:
    write_plan(folder, MLP_PLAN)
    clients = []
    for name, table in blobs([50, 35, 60]).items():
        table.to_pandas().to_csv(folder / f"{name}.csv", index=False)
        clients.append(f'[[clients]]\nname = "{name}"\ndata = ["{name}.csv"]\n')
    (folder / "study.toml").write_text(
        'name = "proc"\napp = "train"\nseed = 8\n'
        '[params]\nplan = "plan.py"\ntarget = "label"\nrounds = 4\nlr = 0.1\nbatch_size = 16\n'
        'metric = "accuracy"\n' + "".join(clients)
    )
    return folder / "study.toml"


@pytest.mark.slow
def test_site_processes_give_the_bytes_of_the_in_memory_run(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from fedflow.runtime.run import run_study
    from fedflow.runtime.simulate import simulate

    study = load_study(_study(tmp_path))
    run = run_study(study, out=tmp_path / "run", command=[])
    assert run.status == "completed"
    params = {**study.params, "plan": str(tmp_path / "plan.py")}
    sim = simulate("train", params, blobs([50, 35, 60]), seed=8)
    for name in ("model-last.safetensors", "model-best.safetensors"):
        assert (run.dir / name).read_bytes() == sim.done.artifacts[name], name
    # metrics.json and the checkpoint encode each settled history entry once (GrowingList):
    # both hold the history the run ended with, entries filled in after they were first written
    # included
    from fedflow.training.app import CHECKPOINT
    from fedflow.training.checkpoint import load_checkpoint

    history = sim.result["history"]
    assert len(history) == 5 and all("global" in h for h in history)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["training"] == history
    assert load_checkpoint(run.dir)[1][CHECKPOINT]["meta"]["history"] == history


def test_without_torch_a_training_study_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedflow.runtime.run import run_study

    real = importlib.util.find_spec

    def no_torch(name: str, *args: Any) -> Any:
        return None if name in ("torch", "safetensors") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_torch)
    study = load_study(_study(tmp_path))
    with pytest.raises(AppError, match=r"pip install 'fedflow-studies\[torch\]'"):
        run_study(study, out=tmp_path / "run", command=[])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_a_killed_coordinator_resumes_with_fedflow_resume_to_the_same_bytes(
    tmp_path: Path, strategy: str
) -> None:
    """SIGKILL the coordinator once a checkpoint exists (no handler runs), then ``fedflow
    resume``: the model is the one the run would have made uninterrupted. With SCAFFOLD the
    site processes (killed with it) left their controls in ``sites/<site>/state``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("torch")
    from fedflow.runtime.simulate import simulate
    from fedflow.training.checkpoint import load_checkpoint

    study_file = _study(tmp_path)
    text = study_file.read_text().replace("rounds = 2", "rounds = 300")
    study_file.write_text(text.replace("[params]\n", f'[params]\nstrategy = "{strategy}"\n'))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedflow.cli", "run", str(study_file), "--out", str(out)]
    proc = subprocess.Popen(command + ["-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    done_before, saved = load_checkpoint(out)
    assert 1 <= done_before < 301
    if strategy == "scaffold":
        assert set(saved["checkpoint"]["arrays"]) <= {"weights", "best", "control"}
        assert len(list(out.glob("sites/*/state/*.safetensors"))) >= 3
    resumed = subprocess.run(
        [sys.executable, "-m", "fedflow.cli", "resume", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    params = {**load_study(study_file).params, "plan": str(tmp_path / "plan.py")}
    sim = simulate("train", params, blobs([50, 35, 60]), seed=8)
    assert (out / "model-last.safetensors").read_bytes() == sim.done.artifacts[
        "model-last.safetensors"
    ]
    assert (out / "attempts" / "1" / "manifest.json").is_file()


def test_validate_finds_the_plan_beside_the_study(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from fedflow.validate import validate_study

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root / "src")  # anywhere but the study's folder
    report = validate_study(root / "examples" / "training" / "study.toml")
    assert [line.split(":")[0] for line in report.lines] == [
        "hospital_a",
        "hospital_b",
        "hospital_c",
    ]
