"""What the coordinator imports while the sites start: the app's ``coordinator_imports`` and,
for a training study whose plan imports torch, torch with fedflow's deterministic settings (so
that the first round does not wait for 4 s of imports after the sites' own)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedflow.connectors.memory import MemoryConnector
from fedflow.runtime.coordinator import Coordinator
from fedflow.runtime.observer import Observer
from fedflow.runtime.run import _training_imports
from fedflow.study import load_study
from tests.helpers import SITES, copy_quickstart


class _Order(Observer):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def round_started(self, round: int) -> None:
        self.events.append(f"round {round}")


def test_the_warm_up_runs_once_before_the_first_round(tmp_path: Path) -> None:
    study = load_study(copy_quickstart(tmp_path))
    events: list[str] = []
    coordinator = Coordinator(
        study.app,
        study.params,
        {name: MemoryConnector(name) for name in SITES},
        {c.name: c.data for c in study.clients},
        observer=_Order(events),
        warm=lambda: events.append("warm"),
    )
    asyncio.run(coordinator.run())
    assert events[0] == "warm" and events.count("warm") == 1
    assert events[1] == "round 1"


def _train_study(folder: Path, plan: str) -> Path:
    (folder / "plan.py").write_text(plan)
    (folder / "a.csv").write_text("x,y\n1,0\n")
    (folder / "study.toml").write_text(
        'app = "train"\n[params]\nplan = "plan.py"\ntarget = "y"\n'
        '[[clients]]\nname = "a"\ndata = ["a.csv"]\n'
    )
    return folder / "study.toml"


def test_only_a_torch_plan_gets_torch_warmed(tmp_path: Path) -> None:
    assert _training_imports(load_study(copy_quickstart(tmp_path))) is None
    sklearn = tmp_path / "sk"
    sklearn.mkdir()
    plan = (
        "from sklearn.linear_model import SGDClassifier\ndef model():\n    return SGDClassifier()\n"
    )
    assert _training_imports(load_study(_train_study(sklearn, plan))) is None
    torch_plan = tmp_path / "torch"
    torch_plan.mkdir()
    warm = _training_imports(load_study(_train_study(torch_plan, "import torch\n")))
    assert warm is not None
    torch = pytest.importorskip("torch")
    torch.set_deterministic_debug_mode(0)  # as a fresh coordinator has it
    torch.set_num_threads(2)
    warm()
    assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1


def _fresh_python(script: str) -> list[str]:
    """What ``script`` prints, run by a fresh interpreter without Inductor's environment flag."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    return out.stdout.split()


def test_deterministic_sets_the_kernel_flag_without_importing_dynamo() -> None:
    """deterministic() must make kernels deterministic and tell Inductor so, without paying
    for TorchDynamo's import (torch.use_deterministic_algorithms imports it to set one flag)."""
    pytest.importorskip("torch")
    printed = _fresh_python(
        "import sys\n"
        "from fedflow.training.engine import deterministic\n"
        "torch = deterministic()\n"
        "dynamo = 'torch._dynamo' in sys.modules\n"
        "import torch._inductor.config as inductor\n"
        "print(torch.are_deterministic_algorithms_enabled(),\n"
        "      torch.is_deterministic_algorithms_warn_only_enabled(),\n"
        "      torch.get_num_threads(), dynamo, inductor.deterministic)\n"
    )
    assert printed == ["True", "False", "1", "False", "True"]


def test_deterministic_sets_inductors_flag_when_inductor_is_imported() -> None:
    pytest.importorskip("torch")
    printed = _fresh_python(
        "import torch._inductor.config as inductor\n"
        "from fedflow.training.engine import ready_to_train\n"
        "torch = ready_to_train()\n"
        "print(inductor.deterministic, torch.are_deterministic_algorithms_enabled())\n"
    )
    assert printed == ["True", "True"]


@pytest.mark.parametrize("compare", [False, True])
def test_the_coordinator_imports_dynamo_only_for_compare(tmp_path: Path, compare: bool) -> None:
    """``--compare`` trains centrally, and its optimiser imports TorchDynamo: then it is
    imported while the sites start; without ``--compare`` the coordinator never needs it."""
    pytest.importorskip("torch")
    study = _train_study(tmp_path, "import torch\n")
    printed = _fresh_python(
        "import sys\n"
        "from fedflow.runtime.run import _training_imports\n"
        "from fedflow.study import load_study\n"
        f"_training_imports(load_study({str(study)!r}), compare={compare})()\n"
        "import torch\n"
        "print('torch._dynamo' in sys.modules, torch.are_deterministic_algorithms_enabled())\n"
    )
    assert printed == [str(compare), "True"]
