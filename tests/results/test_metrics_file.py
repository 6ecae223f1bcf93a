"""metrics.json, rewritten after every training round, and every other JSON file of a run directory
are written by a fast path that must give exactly the bytes of json_ready, then json.dumps indented."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.results.rundir import RunDirectory, json_ready


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


def _reference(data: Any) -> bytes:
    """What the run directory's JSON files hold: json_ready, then json's own indented dump."""
    return (json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n").encode()


def _both(tmp_path: Path, metrics: dict) -> tuple[bytes, bytes]:
    fast = RunDirectory(tmp_path / "fast")
    fast.metrics.clear()
    fast.metrics.update(metrics)
    fast.write_metrics()
    general = fast.write_json("general.json", metrics).read_bytes()
    assert general == _reference(metrics)
    return (fast.path / "metrics.json").read_bytes(), general


def test_metrics_json_has_the_general_writers_bytes(tmp_path: Path) -> None:
    fast, general = _both(tmp_path, _metrics())
    assert fast == general
    assert json.loads(fast)["rounds"][0]["sites"]["Zürich"]["bytes_to_site"] == 19_392
    assert not (tmp_path / "fast" / ".metrics.json.tmp").exists()


def test_non_finite_values_are_written_as_null_as_before(tmp_path: Path) -> None:
    metrics = _metrics()
    metrics["rounds"][0]["weights"] = np.array([1.0, np.nan, np.inf])
    metrics["training"][0]["global"]["loss"] = float("nan")
    fast, general = _both(tmp_path, metrics)
    assert fast == general
    assert json.loads(fast)["rounds"][0]["weights"] == [1.0, None, None]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_write_json_gives_json_dumps_indented_bytes(tmp_path_factory: Any, data: Any) -> None:
    rd = RunDirectory(tmp_path_factory.mktemp("run"))
    written = rd.write_json("x.json", data).read_bytes()
    assert written == _reference(data)
    if not isinstance(data, float) or math.isfinite(data):
        assert json.loads(written) == json_ready(data)


def test_a_forced_run_removes_the_temporary_files_a_killed_run_left(tmp_path: Path) -> None:
    """What ``atomic_write`` was writing when a run was killed (``.metrics.json.tmp``), and what
    runs of earlier versions left (``metrics.json.tmp``), goes with ``--force``; other files stay."""
    from fedflow._atomic import temporary_name
    from fedflow.results.rundir import clear_run_files

    folder = tmp_path / "run"
    folder.mkdir()
    left = [temporary_name(folder / "metrics.json"), folder / "manifest.json.tmp"]
    for path in [*left, folder / "notes.txt"]:
        path.write_text("x")
    clear_run_files(folder)
    assert not any(path.exists() for path in left)
    assert (folder / "notes.txt").exists()
