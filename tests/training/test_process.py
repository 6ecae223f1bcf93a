"""Training through real site processes: the same bytes as in memory, and a clear message when
torch is missing."""

from __future__ import annotations

import importlib.util
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
        '[params]\nplan = "plan.py"\ntarget = "label"\nrounds = 2\nlr = 0.1\nbatch_size = 16\n'
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
