"""The Python API: fedflow.run(path or Study, **overrides) -> Run."""

from __future__ import annotations

from pathlib import Path

import fedflow
from fedflow.connectors.memory import MemoryConnector
from tests.helpers import SITES, copy_quickstart


def test_run_from_a_path_with_overrides(tmp_path: Path) -> None:
    study = copy_quickstart(tmp_path)
    run = fedflow.run(
        study,
        params={"target": "malignant", "features": ["radius"]},
        out=tmp_path / "run",
        compare=True,
    )
    assert run.status == "completed" and run.matches
    assert set(run.result["coefficients"]) == {"intercept", "radius"}
    assert run.dir == tmp_path / "run" and (run.dir / "result.json").exists()
    assert run.metrics["rounds"] and run.manifest["params"]["features"] == ["radius"]
    text = str(run)
    assert "radius" in text and "intercept" in text and str(run.dir) in text
    assert "<pre" in run._repr_html_()


def test_run_a_study_object_with_injected_connectors(tmp_path: Path) -> None:
    study = fedflow.load_study(copy_quickstart(tmp_path))
    connectors = {name: MemoryConnector(name) for name in SITES}
    run = fedflow.run(
        study,
        app="stats",
        params={"columns": ["radius"]},
        connectors=connectors,
        out=tmp_path / "r",
    )
    assert run.result["radius"]["count"] == 569
    assert all(c.closed for c in connectors.values())
