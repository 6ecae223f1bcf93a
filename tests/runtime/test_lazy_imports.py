"""A plain study loads only what it runs: the coordinator of a logistic-regression study (the
quickstart) and the fork server every local site is forked from never import scipy.stats (a
second or more), the secure-aggregation stack (cryptography), pandas or torch; secure studies
and the apps that need scipy.stats still get them (tests/runtime/test_secure_run.py and the
apps' tests run them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedflow.apps import get_app

HEAVY = ["scipy.stats", "fedflow.secure", "cryptography", "pandas", "torch"]

_REPORT = f"""
import json, sys
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "study.toml"


def _loaded(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + _REPORT], check=True, capture_output=True, text=True
    ).stdout
    return list(json.loads(out.splitlines()[-1]))


def test_the_fork_server_imports_no_heavy_module() -> None:
    # importing the module is what the fork server does before forking sites (warm-up included)
    assert _loaded("import fedflow.node.forkserver") == []


@pytest.mark.slow
def test_the_coordinator_of_a_plain_run_imports_no_heavy_module(tmp_path: Path) -> None:
    code = (
        "from fedflow.cli import main\n"
        f"assert main(['run', {str(QUICKSTART)!r}, '--out', {str(tmp_path / 'run')!r}, '-q']) == 0\n"
    )
    assert _loaded(code) == []
    assert json.loads((tmp_path / "run" / "result.json").read_text())["app"] == (
        "logistic-regression"
    )


def test_apps_name_what_their_aggregates_import() -> None:
    assert get_app("logistic-regression").coordinator_imports == ("scipy.special",)
    assert "scipy.stats" in get_app("stats").coordinator_imports  # the default
