"""What a remote site's venv gets for a training study (torch, scikit-learn), how a venv that sees
the site Python's own packages is made, and when a prepared venv is reused — without a site."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from fedflow.connectors import siteprep, wheel
from fedflow.connectors.siteprep import SiteMachine
from fedflow.connectors.ssh import plan_imports, training_needs
from fedflow.study.load import study_from_dict

TORCH_PLAN = "import torch\nfrom torch import nn\n\ndef model():\n    return nn.Linear(2, 1)\n"
SKLEARN_PLAN = (
    "from sklearn.linear_model import SGDRegressor\n\ndef model():\n    return SGDRegressor()\n"
)


def study(tmp_path: Path, app: str = "train", plan: str | None = TORCH_PLAN):
    params = {}
    if plan is not None:
        (tmp_path / "plan.py").write_text(plan)
        params = {"plan": "plan.py", "target": "y"}
    raw = {"name": "s", "app": app, "params": params if app == "train" else {}}
    raw["clients"] = [{"name": "a", "hostname": "example.org", "data": ["a.csv"]}]
    return study_from_dict(raw, source=tmp_path / "study.toml")


def test_plan_imports_are_read_without_running_the_plan() -> None:
    source = "import os.path\nimport torch.nn as nn\nfrom sklearn import metrics\nfrom . import x\n"
    assert plan_imports(source) == {"os", "torch", "sklearn"}
    assert plan_imports("def broken(:\n") == set()


@pytest.mark.parametrize(
    ("plan", "needs"),
    [
        (TORCH_PLAN, (["torch"], [])),
        (SKLEARN_PLAN, ([], ["scikit-learn"])),
        (TORCH_PLAN + SKLEARN_PLAN, (["torch"], ["scikit-learn"])),
        ("def model():\n    return None\n", (["torch"], [])),  # the contract's default
    ],
)
def test_a_training_study_needs_what_its_plan_imports(
    tmp_path: Path, plan: str, needs: tuple[list[str], list[str]]
) -> None:
    assert training_needs(study(tmp_path, plan=plan)) == needs


def test_other_apps_need_nothing_more(tmp_path: Path) -> None:
    assert training_needs(study(tmp_path, app="mean", plan=None)) == ([], [])


def test_the_wheelhouse_holds_torch_and_the_packages_at_this_installations_versions() -> None:
    names = {wheel.pinned(d) for d in wheel.dependency_closure(["torch"], ["scikit-learn"])}
    assert f"torch=={importlib.metadata.version('torch')}" in names
    assert f"scikit-learn=={importlib.metadata.version('scikit-learn')}" in names
    assert "safetensors==" + importlib.metadata.version("safetensors") in names
    plain = {wheel.pinned(d) for d in wheel.dependency_closure()}
    assert not any(n.startswith(("torch==", "scikit-learn==")) for n in plain)


def test_present_packages_are_parsed_and_unreadable_output_is_none() -> None:
    assert siteprep.parse_present('["torch==2.13.0+cpu", "numpy==2.4.6"]\n') == {
        "torch==2.13.0+cpu",
        "numpy==2.4.6",
    }
    assert siteprep.parse_present("Traceback ...") == frozenset()


def test_a_venv_is_reused_only_when_it_has_the_extras_the_study_needs() -> None:
    marker = {"build": wheel.build_id(), "install": "wheels", "extras": ["parquet", "torch"]}
    machine = SiteMachine("/h", "/w", marker=marker)
    assert siteprep.is_current(machine, "wheels", ["torch"])
    assert siteprep.is_current(machine, "wheels", [])
    assert not siteprep.is_current(machine, "wheels", ["torch"], ["scikit-learn"])
    assert not siteprep.is_current(machine, "wheels", ["torch"], system=True)
    bare = SiteMachine("/h", "/w", marker={"build": wheel.build_id(), "install": "wheels"})
    assert not siteprep.is_current(bare, "wheels", ["torch"])


def test_the_marker_records_extras_packages_and_system() -> None:
    machine = SiteMachine("/h", "/w", python_version=(3, 11, 4))
    text = siteprep.marker_text(
        machine,
        build="b",
        deps="k",
        install="wheels",
        extras=["torch"],
        packages=["scikit-learn"],
        system=True,
    )
    assert json.loads(text) == {
        "build": "b",
        "deps": "k",
        "python": [3, 11, 4],
        "install": "wheels",
        "extras": ["torch"],
        "packages": ["scikit-learn"],
        "system": True,
    }


def test_a_system_packages_venv_uses_the_site_python_and_pins_to_the_coordinator() -> None:
    machine = SiteMachine("/h", "/w", "/opt/py/bin/python3", (3, 11, 7), has_venv=True)
    common = {"wheel": "f.whl", "constraints": "c.txt", "extras": ["torch"], "full": True}
    script, update = siteprep.install_script(
        machine, deps="k", system=True, site_pip=True, deps_present=True, **common
    )
    assert not update
    assert "/opt/py/bin/python3 -m venv --system-site-packages --without-pip /w/venv" in script
    # fedflow alone, forced into the venv; its dependencies are the site Python's own
    assert script.count("pip install") == 1
    assert "-c /w/wheels/c.txt --no-deps --force-reinstall /w/wheels/f.whl" in script
    script, _ = siteprep.install_script(machine, deps="k", system=True, **common)
    assert "--system-site-packages /w/venv" in script  # no pip of its own: the venv seeds one
    assert script.count("pip install") == 2 and script.endswith("'/w/wheels/f.whl[torch]'")
    assert script.count("--no-index --find-links /w/wheels -c /w/wheels/c.txt") == 2
    plain, _ = siteprep.install_script(machine, deps="k", packages=["scikit-learn"], **common)
    assert "--system-site-packages" not in plain and "-c " not in plain
    assert plain.endswith("'/w/wheels/f.whl[torch]' scikit-learn")
    assert "--no-compile" in plain


def test_torch_is_added_by_a_command_of_its_own() -> None:
    machine = SiteMachine("/h", "/w", "/usr/bin/python3", (3, 11, 2), has_venv=True)
    step = siteprep.extras_script(
        machine, wheel="f.whl", constraints="c.txt", extras=["parquet", "torch"], full=False
    )
    assert step.endswith(
        "--find-links /w/wheels -c /w/wheels/c.txt '/w/wheels/f.whl[parquet,torch]'"
    )
    assert "--no-deps" not in step
