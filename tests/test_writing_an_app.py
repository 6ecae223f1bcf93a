"""The guide's two-phase example app is the file in examples/plugin, and it runs and matches."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from fedflow.apps import Table
from fedflow.runtime.simulate import simulate
from tests.helpers import ROOT, fedflow

PLUGIN = ROOT / "examples" / "plugin"


def test_the_guide_shows_the_example_file_verbatim() -> None:
    guide = (ROOT / "docs" / "writing-an-app.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert (PLUGIN / "twopass.py").read_text(encoding="utf-8") in blocks


@pytest.fixture()
def twopass(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(PLUGIN))
    yield "twopass:TwoPassVariance"
    sys.modules.pop("twopass", None)


def test_the_example_app_matches_numpy_in_memory(twopass: str) -> None:
    rng = np.random.default_rng(1)
    values = [rng.normal(3.0, 2.0, size=n) for n in (40, 7, 90)]
    sites = {f"s{i}": Table({"v": v}) for i, v in enumerate(values)}
    sim = simulate(twopass, {"column": "v"}, sites)
    assert sim.rounds == 2
    pooled = np.concatenate(values)
    assert sim.result["n"] == len(pooled)
    assert sim.result["variance"] == pytest.approx(np.var(pooled, ddof=1), rel=1e-12)


def test_the_example_study_runs_with_compare(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN), env.get("PYTHONPATH", "")])
    proc = fedflow(
        "run", "study.toml", "--compare", "--out", str(tmp_path / "run"), cwd=PLUGIN, env=env
    )
    assert proc.returncode == 0, proc.stderr
    comparison = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert comparison["status"] == "match" and comparison["compared"] == 2
