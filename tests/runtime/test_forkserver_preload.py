"""The fork server loads a training study's torch once, before it forks the sites, so the sites
share it instead of each importing it in round 1; every other study's fork server never loads it.
(That forked sites still train to the bytes of the in-memory run is tests/training/test_process.py,
whose run goes through this fork server.) Forked sites run under SCHED_BATCH."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedflow.connectors.forkserver import ForkServer, site_imports
from fedflow.connectors.local import LocalConnector
from fedflow.study import load_study

PLAN = """
import math
import torch
import torch.nn.functional as F
from torch import nn
from sklearn.linear_model import SGDClassifier
from . import sibling  # relative: never preloaded
import mypackage.torch  # not a torch module
"""


def _study(folder: Path, app: str = "train", plan: str = PLAN) -> Path:
    (folder / "plan.py").write_text(plan, encoding="utf-8")
    params = (
        '[params]\nplan = "plan.py"\ntarget = "y"\n'
        if app == "train"
        else '[params]\ntarget = "y"\nfeatures = ["x"]\n'
    )
    (folder / "study.toml").write_text(
        f'name = "s"\napp = "{app}"\n{params}[[clients]]\nname = "a"\ndata = ["a.csv"]\n'
    )
    return folder / "study.toml"


def test_a_training_study_names_the_torch_and_sklearn_modules_its_plan_imports(
    tmp_path: Path,
) -> None:
    study = load_study(_study(tmp_path))
    assert site_imports(study) == ("torch", "torch.nn.functional", "sklearn.linear_model")


def test_other_studies_and_unreadable_plans_preload_nothing(tmp_path: Path) -> None:
    assert site_imports(load_study(_study(tmp_path, app="linear-regression"))) == ()
    assert site_imports(load_study(_study(tmp_path, plan="import torch\ndef (:\n"))) == ()
    study = load_study(_study(tmp_path))
    (tmp_path / "plan.py").unlink()
    assert site_imports(study) == ()


def _has_torch(pid: int) -> bool:
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("preload", [["torch"], []])
def test_forked_sites_have_torch_loaded_exactly_when_the_server_preloads_it(
    tmp_path: Path, preload: list[str]
) -> None:
    pytest.importorskip("torch")
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc")

    async def scenario() -> None:
        server = ForkServer(preload=preload)
        sites = [
            LocalConnector(f"s{i}", log_path=tmp_path / f"s{i}.log", forkserver=server)
            for i in range(2)
        ]
        await asyncio.gather(*(s.start() for s in sites))
        try:
            assert server._proc is not None
            assert _has_torch(server._proc.pid) == bool(preload)
            for site in sites:  # before any task: loaded by the server, not by the site
                assert site.pid is not None and _has_torch(site.pid) == bool(preload)
                # sites compute; the coordinator, woken by their replies, is not preempted by
                # the next site its tasks wake
                assert os.sched_getscheduler(site.pid) == os.SCHED_BATCH
            assert os.sched_getscheduler(server._proc.pid) == os.SCHED_OTHER
        finally:
            await asyncio.gather(*(s.close() for s in sites))
            await server.close()

    asyncio.run(scenario())


def test_the_preload_leaves_torch_ready_to_train() -> None:
    """A torch optimiser imports TorchDynamo when it is built: the server imports it before its
    first fork (with the deterministic settings), or each forked site would import it in round 1
    (1.8 s of CPU each; 10 sites took 10 s over their first round so)."""
    pytest.importorskip("torch")
    script = (
        "import sys\n"
        "from fedflow.node.forkserver import preload\n"
        "preload(['torch'])\n"
        "import torch\n"
        "print('torch._dynamo' in sys.modules, torch.are_deterministic_algorithms_enabled(),\n"
        "      torch.get_num_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["True", "True", "1"]
