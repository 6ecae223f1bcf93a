"""metrics.json, rewritten after every training round, is written by a fast path that must give
exactly the bytes of the general writer (``write_json``: json_ready, then json.dumps indented)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedflow.results.rundir import RunDirectory


def _metrics() -> dict:
    return {
        "phases": [{"name": "start sites", "seconds": 0.123456789}, {"name": "prepare"}],
        "rounds": [
            {
                "round": 1,
                "seconds": 1e-05,
                "sites": {
                    "Zürich": {"compute_seconds": 2.5e-7, "bytes_to_site": np.int64(19_392)},
                    'site \u2028 "quoted" \\ tab\t': {"peak": np.float32(1.5), "big": 1.5e20},
                },
                "weights": np.arange(3, dtype=np.float64) / 3,
                "empty": {},
                "none": [],
            }
        ],
        "training": [{"round": 0, "global": {"accuracy": np.float64(0.8552)}, "path": Path("/x")}],
        "flags": [True, False, None, -0.0, 10**30],
    }


def _both(tmp_path: Path, metrics: dict) -> tuple[bytes, bytes]:
    fast = RunDirectory(tmp_path / "fast")
    general = RunDirectory(tmp_path / "general")
    for rd in (fast, general):
        rd.metrics.clear()
        rd.metrics.update(metrics)
    fast.write_metrics()
    general.write_json("metrics.json", general.metrics)
    return (fast.path / "metrics.json").read_bytes(), (general.path / "metrics.json").read_bytes()


def test_metrics_json_has_the_general_writers_bytes(tmp_path: Path) -> None:
    fast, general = _both(tmp_path, _metrics())
    assert fast == general
    assert json.loads(fast)["rounds"][0]["sites"]["Zürich"]["bytes_to_site"] == 19_392
    assert not (tmp_path / "fast" / "metrics.json.tmp").exists()


def test_non_finite_values_are_written_as_null_as_before(tmp_path: Path) -> None:
    metrics = _metrics()
    metrics["rounds"][0]["weights"] = np.array([1.0, np.nan, np.inf])
    metrics["training"][0]["global"]["loss"] = float("nan")
    fast, general = _both(tmp_path, metrics)
    assert fast == general
    assert json.loads(fast)["rounds"][0]["weights"] == [1.0, None, None]
