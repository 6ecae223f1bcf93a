"""The original fedflow's studies run unchanged: its example (``example/`` of W-L/fedflow, held
verbatim in ``tests/original/example``) runs with ``fedflow -c config_mean.toml`` through the
native twin of FeatureCloud's mean app; original ``[debug]`` keys and FeatureCloud tools without
a twin get a notice or a one-line error saying what to change."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import Table
from fedflow.errors import StudyError
from fedflow.runtime.simulate import simulate
from fedflow.study import load_study, twin_adaboost
from fedflow.study.original import TWINS, UNTWINNED
from tests.helpers import fedflow

EXAMPLE = Path(__file__).parent / "example"
TWIN = "fedflow.apps.fc_mean:FeatureCloudMean"

# sha256 of the original repository's files (github.com/W-L/fedflow, example/ at 76a111a), so
# the fixture stays byte for byte what the original shipped
VERBATIM = {
    "config_mean.toml": "1df0d838ed4aea860336d81e50941636eb6cfeae347cb92a7f49a1967c040352",
    "config.yml": "e8200413c78401178f9144d82b0ffdaeb4afc7100ef82d1e26e18b71f97031bf",
    "data/A/data.csv": "c076d73f0901ab7742451feee67eb44938315a070b0b8e6321985bae63d186c9",
    "data/B/data.csv": "a4fb8a7598a77f4aa7feb0d4b3355901913c8794ad5c43168cbe50fbde9349c1",
    "data/C/data.csv": "c9908de8304fb0cf5a072d77b9d93c6208aeb4ebc311548d53df4752ccf08bce",
}


def _copy_example(tmp_path: Path) -> Path:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    return folder


def _pooled_values(folder: Path) -> np.ndarray:
    """Every number of the three data files, parsed here without pandas or fedflow."""
    values = []
    for site in "ABC":
        text = (folder / "data" / site / "data.csv").read_text()
        values += [float(v) for v in text.strip().split(",")]
    return np.array(values)


def test_the_example_is_the_originals() -> None:
    """The fixture is the original's example as it is (a headerless line of ten numbers per
    client, and the app's config.yml), not a version edited to suit fedflow."""
    toml = (EXAMPLE / "config_mean.toml").read_text()
    assert "sim = true\ntool = 'mean-app'\n" in toml
    assert "app =" not in toml and "header" not in toml and "columns" not in toml
    assert toml.count('data = ["data/') == 3 and toml.count('"config.yml"]') == 3
    assert (EXAMPLE / "config.yml").read_text() == (
        'fc_mean:\n    input_name: "data.csv"\n    output_name: "output.csv"\n'
    )
    for site in "ABC":
        line = (EXAMPLE / "data" / site / "data.csv").read_text()
        assert "\n" not in line and len(line.split(",")) == 10
    for name, digest in VERBATIM.items():
        assert hashlib.sha256((EXAMPLE / name).read_bytes()).hexdigest() == digest, name


def test_fedflow_c_runs_the_original_example(tmp_path: Path) -> None:
    folder = _copy_example(tmp_path)
    started = time.monotonic()
    done = fedflow("-c", "config_mean.toml", "--compare", cwd=folder)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    expected = float(np.mean(_pooled_values(folder)))
    assert "54.2" in done.stdout  # the result is printed
    assert "matches numpy" in done.stdout
    assert "config.yml is mean-app's configuration, not data" in done.stderr
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert run_dir.parent.parent == folder / "results"
    for site in ("site-1", "site-2", "site-3"):
        written = (run_dir / "sites" / site / "output.csv").read_text()
        assert float(written) == pytest.approx(expected, rel=1e-12)
        assert (run_dir / "sites" / site / "config.yml").read_text() == (
            folder / "config.yml"
        ).read_text()  # the app copies its config to its output folder
    result = json.loads((run_dir / "result.json").read_text())["result"]
    assert result["values"] == 30 and result["sites"] == 3
    # the coordinator's start-up dominates; the budget is 2 s on an idle machine, looser here
    # because the suite shares two cores with other processes
    assert seconds < 30


def _fc_mean_app(frames: list[pd.DataFrame]) -> float:
    """FeatureCloud's mean app, as its algo.py computes: each client's sum over its number of
    columns, then the unweighted average of those local means."""
    local = [f.to_numpy().sum() / f.shape[1] for f in frames]
    return float(np.sum(local) / len(local))


@pytest.mark.parametrize(
    "files",
    [
        # the example's shape: one line of ten values per client
        [
            "1,2,3,4,5,6,7,8,9,10",
            "0.5,1.5,2.5,3.5,4.5,5.5,6.5,7.5,8.5,9.5",
            "-3,4,-5,6,-7,8,9,1,2,3",
        ],
        # unequal shapes: the app's formula departs from the pooled mean, and so does the twin
        ["1,2,3,4,5\n6,7,8,9,10", "2.5,3.5,4.5,5.5,6.5,7.5", "100,200,300,400,500,600,700"],
    ],
)
def test_the_twin_computes_what_the_app_computes(files: list[str], tmp_path: Path) -> None:
    frames = []
    sites = {}
    for i, text in enumerate(files):
        path = tmp_path / f"{i}.csv"
        path.write_text(text)
        frame = pd.read_csv(path, header=None)  # as the app reads its input
        frames.append(frame)
        sites[f"s{i}"] = Table.from_pandas(frame.rename(columns=str))
    sim = simulate(TWIN, {"output_name": "mean.txt", "min_values": 5}, sites, min_count=1)
    expected = _fc_mean_app(frames)
    assert sim.result["mean"] == pytest.approx(expected, rel=1e-13)
    pooled = np.concatenate([f.to_numpy().ravel() for f in frames])
    assert sim.result["pooled_mean"] == pytest.approx(pooled.mean(), rel=1e-13)
    for outputs in sim.site_outputs.values():
        assert float(outputs["mean.txt"]) == pytest.approx(expected, rel=1e-13)
    differs = not np.isclose(expected, pooled.mean(), rtol=1e-12)
    assert any("unweighted" in n for n in sim.notes) == differs


def test_a_site_with_fewer_values_than_min_count_refuses(tmp_path: Path) -> None:
    sites = {
        "a": Table({"0": np.array([1.0]), "1": np.array([2.0])}),
        "b": Table({"0": np.ones(6)}),
    }
    with pytest.raises(Exception, match="min_count"):
        simulate(TWIN, {"min_values": 5}, sites, min_count=1)


def _study(folder: Path, text: str) -> Path:
    path = folder / "config_mean.toml"
    path.write_text(text)
    return path


def test_tool_without_a_twin_says_what_to_write(tmp_path: Path) -> None:
    folder = _copy_example(tmp_path)
    text = (folder / "config_mean.toml").read_text()
    with pytest.raises(StudyError, match="tool = 'x-app' has no native twin.*set app ="):
        load_study(_study(folder, text.replace("'mean-app'", "'x-app'")))
    done = fedflow("-c", "config_mean.toml", cwd=folder)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and 'platform = "featurecloud"' in done.stderr


def test_a_tool_listed_without_a_twin_says_what_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(UNTWINNED, "x-boost", 'app = "random-forest" with [params] target')
    folder = _copy_example(tmp_path)
    text = (folder / "config_mean.toml").read_text()
    with pytest.raises(
        StudyError, match="tool = 'x-boost' has no native twin yet: write app = \"random-forest\""
    ):
        load_study(_study(folder, text.replace("'mean-app'", "'x-boost'")))


def test_an_original_ada_boost_study_selects_its_twin(tmp_path: Path) -> None:
    """The ada-boost twin (``fedflow.study.twin_adaboost``, ``fedflow.apps.adaboost``) is
    registered: its config.yml (the original workflow's, verbatim) selects it, named by
    ``tool`` or, as in the workflow's FeatureCloud projects, by its section alone."""
    assert TWINS["ada-boost"] == twin_adaboost.TWIN_APP and "ada-boost" not in UNTWINNED
    frame = pd.DataFrame(
        {"a": np.arange(40.0), "b": np.arange(40.0) ** 2, "health_status": np.arange(40) % 2}
    )
    frame.to_csv(tmp_path / "species.csv", index=False)
    shutil.copy(Path(__file__).parent / "adaboost" / "config.yml", tmp_path / "config.yml")
    for head in ("tool = 'ada-boost'\n", ""):
        path = tmp_path / "study.toml"
        path.write_text(f'{head}sim = true\n\n[[clients]]\ndata = ["species.csv", "config.yml"]\n')
        study = load_study(path)
        assert study.app == twin_adaboost.TWIN_APP
        assert [Path(p).name for p in study.clients[0].data] == ["species.csv"]
        assert study.params["label_col"] == "health_status"
    assert "fc_boosting:, the section of FeatureCloud's ada-boost app" in "\n".join(study.notices)


def test_a_twin_study_missing_its_config_or_input_says_what_to_add(tmp_path: Path) -> None:
    folder = _copy_example(tmp_path)
    text = (folder / "config_mean.toml").read_text()
    with pytest.raises(StudyError, match=r"client 'site-2'.*add \"config.yml\""):
        load_study(
            _study(folder, text.replace('["data/B/data.csv", "config.yml"]', '["data/B/data.csv"]'))
        )
    (folder / "other.yml").write_text(
        'fc_mean:\n  input_name: "values.csv"\n  output_name: "o.csv"\n'
    )
    (folder / "config.yml").write_text((folder / "other.yml").read_text())
    with pytest.raises(StudyError, match="mean-app reads 'values.csv'.*add that file"):
        load_study(_study(folder, text))
    (folder / "config.yml").write_text("mean:\n  input_name: x\n")
    with pytest.raises(StudyError, match="no 'fc_mean:' section"):
        load_study(_study(folder, text))


def test_original_debug_keys_are_accepted(tmp_path: Path) -> None:
    folder = _copy_example(tmp_path)
    text = (folder / "config_mean.toml").read_text()
    debug = "[debug]\nnodeps = true\nreinstall = false\ntimeout = 600\nvmonly = false\n"
    study = load_study(
        _study(folder, text.replace("\n\n[[clients]]", f"\n{debug}\n[[clients]]", 1))
    )
    assert study.timeout == 600.0  # the most a run may take; natively it bounds each round
    assert study.debug.timeout == 600 and study.debug.nodeps is True
    notices = "\n".join(study.notices)
    for key in ("nodeps", "reinstall", "vmonly"):
        assert f"[debug] {key} has no effect here" in notices
    assert "[debug] timeout = 600" in notices
    assert study.app == TWIN and study.clients[0].header is False
    assert [Path(p).name for p in study.clients[0].data] == ["data.csv"]


def test_apps_lists_the_twins() -> None:
    done = fedflow("apps")
    assert done.returncode == 0
    assert "mean-app" in done.stdout and "FeatureCloud twins" in done.stdout
    for tool, twin in TWINS.items():
        assert f"{tool:22} → {twin}" in done.stdout
    assert "federated-svd" in TWINS and "random-forest" in TWINS
