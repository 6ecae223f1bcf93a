"""``tool = 'ada-boost'``: the original fedflow's ada-boost studies run fedflow's twin of
FeatureCloud's ada-boost app (fc-boosting). ``adaboost/`` holds the original's workflow files
verbatim (github.com/W-L/fedflow, ``analysis/resources/ada-boost/`` at 88ac64e)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedflow.errors import StudyError
from fedflow.runtime.run import arun_study
from fedflow.study import load_study, original
from fedflow.study.twin_adaboost import TWIN_APP, translate
from tests.apps.adaboost_reference import LABEL, site_frames

HERE = Path(__file__).parent / "adaboost"
VERBATIM = {
    "config.yml": "252a5dd4bfa26ca661932aea00d6805a3ece0e80b8f19b1654841e74b1e7eb83",
    "config_fedsim_fed.toml": "45e93980ab350e0ccc67788f803ada4952a5ee9b56b8ae304e97fd9c086a4de3",
}
SAMME_R = json.loads((Path(__file__).parents[1] / "apps" / "adaboost_samme_r.json").read_text())


def test_the_workflow_files_are_the_originals() -> None:
    for name, digest in VERBATIM.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest() == digest, name


def _workflow(root: Path) -> dict[str, Any]:
    """The original's workflow layout under ``root`` (studies in resources/ada-boost/, paths
    relative to the root) with breast_cancer dealt to its five clients; return the fed study
    as the original read it ([general] keys and [clients.N] tables, in order)."""
    raw = tomllib.loads((HERE / "config_fedsim_fed.toml").read_text())
    resources = root / "resources" / "ada-boost"
    resources.mkdir(parents=True)
    (resources / "config.yml").write_bytes((HERE / "config.yml").read_bytes())
    clients = list(raw["clients"].values())
    for frame, client in zip(site_frames("breast_cancer", len(clients)), clients, strict=True):
        path = root / client["data"][0]
        path.parent.mkdir(parents=True)
        frame.to_csv(path, index=False)  # as prep_public_cohorts.py writes species.csv
    return {**raw["general"], "debug": raw["debug"], "clients": clients}


def test_the_workflows_study_maps_to_the_twin(tmp_path: Path, monkeypatch: Any) -> None:
    study = _workflow(tmp_path)
    monkeypatch.chdir(tmp_path)  # the workflow runs from its root folder
    data, notices = translate(study, tmp_path / "resources" / "ada-boost", "fed.toml", [])
    assert data["app"] == TWIN_APP
    assert data["params"] == {
        "label_col": "health_status",
        "test_size": 0.3,
        "n_estimators": 100,
        "learning_rate": 1.0,
        "random_state": 42,
        "metric": "matth",
        "missing_data": "mean",
        "lead_site": "site-1",
    }
    for client in data["clients"]:
        assert len(client["data"]) == 1 and client["data"][0].endswith("species.csv")
        assert Path(client["data"][0]).is_file()
        assert client["sep"] == "," and client["header"] is True
    text = "\n".join(notices)
    assert "ada.csv" in text and "never writes it" in text
    assert "read from the current folder" in text
    assert "files.missing_data = mean: the twin does not fill" in text


def _study(folder: Path, config: str | None = None, sites: int = 3, extra: str = "") -> Path:
    """An original-style study (as the original's example is written) with ``sites`` clients."""
    if config is not None:
        (folder / "config.yml").write_text(config)
    lines = ["sim = true", "tool = 'ada-boost'", extra, ""]
    for i in range(sites):
        lines += [
            "[[clients]]",
            "fc_username = ''",
            f'data = ["data/{"ABCDE"[i]}/species.csv", "config.yml"]',
            "coordinator = true" if i == 0 else "",
            "",
        ]
    path = folder / "config_ada.toml"
    path.write_text("\n".join(lines))
    return path


def _config(**parameters: Any) -> str:
    params = {
        "label_col": "health_status",
        "test_size": 0.3,
        "n_estimators": 20,
        "learning_rate": 1,
        "random_state": 42,
        "metric": "matth",
    }
    params.update(parameters)
    body = "\n".join(f"    {k}: {v}" for k, v in params.items() if v is not ...)
    return (
        "fc_boosting:\n  files:\n    input: species.csv\n    output: ada.csv\n"
        f"    missing_data: mean\n  parameters:\n{body}\n"
    )


def _data(folder: Path, frames: list[pd.DataFrame]) -> None:
    for i, frame in enumerate(frames):
        path = folder / "data" / "ABCDE"[i] / "species.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)


def _load(path: Path, monkeypatch: Any) -> Any:
    """``load_study`` with the ada-boost twin registered (the loader's TWINS may not list it)."""
    monkeypatch.setitem(original.TWINS, "ada-boost", TWIN_APP)
    monkeypatch.setitem(original._TRANSLATORS, "ada-boost", translate)
    monkeypatch.delitem(original.UNTWINNED, "ada-boost", raising=False)
    return load_study(path)


@pytest.mark.slow  # each site process imports scikit-learn (about 2 s of CPU each)
def test_a_run_writes_each_sites_eval_file_as_the_app(tmp_path: Path, monkeypatch: Any) -> None:
    """End to end: the study loader, local site processes, files read from disk, and each
    site's eval_on_local_testset.csv in sites/<site>/, equal to the app's under
    scikit-learn 1.3.2 (its image's SAMME.R)."""
    reference = SAMME_R["cases"][0]
    case = reference["case"]
    assert (case["dataset"], case["sites"], case["metric"]) == ("breast_cancer", 3, "matth")
    _data(tmp_path, site_frames(case["dataset"], case["sites"]))
    config = _config(
        test_size=case["test_size"],
        n_estimators=case["n_estimators"],
        learning_rate=case["learning_rate"],
        random_state=case["random_state"],
    )
    study = _load(_study(tmp_path, config), monkeypatch)
    assert study.app == TWIN_APP and study.clients[0].header is True
    run = asyncio.run(arun_study(study, out=tmp_path / "run", command=["test"]))
    for i, expected in enumerate(reference["sites"]):
        written = (run.dir / "sites" / f"site-{i + 1}" / "eval_on_local_testset.csv").read_text()
        app_file = pd.DataFrame(
            index=["local_model", "global_model"],
            columns=["matth"],
            data=[expected["local_model"], expected["global_model"]],
        ).to_csv()
        assert written == app_file
    result = json.loads((run.dir / "result.json").read_text())["result"]
    assert result["lead_site"] == "site-1" and result["algorithm"] == "SAMME.R"
    assert result["classes"] == ["0", "1"] and LABEL not in result["features"]


def test_a_study_missing_its_config_or_input_says_what_to_add(tmp_path: Path) -> None:
    path = _study(tmp_path, _config())
    text = path.read_text()
    _data(tmp_path, site_frames("iris", 3))
    with pytest.raises(StudyError, match=r"client 'site-2'.*add \"config.yml\""):
        translate(
            _toml(text.replace('"data/B/species.csv", "config.yml"', '"data/B/species.csv"')),
            tmp_path,
            "s",
            [],
        )
    (tmp_path / "config.yaml").write_text(_config())
    with pytest.raises(StudyError, match="reads config.yml .* not config.yaml: rename it"):
        translate(_toml(text.replace('"config.yml"', '"config.yaml"')), tmp_path, "s", [])
    (tmp_path / "config.yml").write_text(_config().replace("species.csv", "cohort.csv"))
    with pytest.raises(StudyError, match="reads 'cohort.csv' .*files.input.*add that file"):
        translate(_toml(text), tmp_path, "s", [])
    (tmp_path / "config.yml").write_text(_config().replace("species.csv", "species.txt"))
    with pytest.raises(StudyError, match="files.input is 'species.txt': .* .csv or .tsv"):
        translate(_toml(text), tmp_path, "s", [])
    (tmp_path / "config.yml").write_text("fc_mean:\n  input_name: x\n")
    with pytest.raises(StudyError, match="no 'fc_boosting:' section"):
        translate(_toml(text), tmp_path, "s", [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_estimators": ...}, r"fc_boosting.parameters.n_estimators is missing"),
        ({"metric": ...}, r"fc_boosting.parameters.metric is missing"),
        (
            {"n_estimators": "'100'"},
            r"fc_boosting.parameters.n_estimators must be a whole number ≥ 1, not '100'",
        ),
        ({"test_size": 1.5}, r"fc_boosting.parameters.test_size must be a fraction .* not 1.5"),
        ({"learning_rate": 0}, r"fc_boosting.parameters.learning_rate must be a positive number"),
        (
            {"random_state": -1},
            r"fc_boosting.parameters.random_state must be a whole number .* not -1",
        ),
        ({"label_col": "''"}, r"fc_boosting.parameters.label_col must be a non-empty text"),
    ],
)
def test_a_missing_or_bad_key_names_client_file_and_key(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = _study(tmp_path, _config(**change))
    _data(tmp_path, site_frames("iris", 3))
    with pytest.raises(StudyError, match=f"s: client 'site-1': config.yml: {message}"):
        translate(_toml(path.read_text()), tmp_path, "s", [])


def test_clients_whose_configs_differ_are_refused(tmp_path: Path) -> None:
    path = _study(tmp_path, _config(), sites=2)
    text = path.read_text().replace(
        '"data/B/species.csv", "config.yml"', '"data/B/species.csv", "b/config.yml"'
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yml").write_text(_config(n_estimators=30))
    _data(tmp_path, site_frames("iris", 2))
    with pytest.raises(StudyError, match="differ in fc_boosting n_estimators .*'site-2': 30"):
        translate(_toml(text), tmp_path, "s", [])


def test_missing_data_drop_drops_rows_with_gaps(tmp_path: Path) -> None:
    path = _study(tmp_path, _config().replace("missing_data: mean", "missing_data: drop"))
    _data(tmp_path, site_frames("iris", 3))
    data, notices = translate(_toml(path.read_text()), tmp_path, "s", [])
    assert data["dropna"] is True and data["params"]["missing_data"] == "drop"
    assert any("as the app's dropna() does" in n for n in notices)


def test_a_zero_random_state_is_seeded_from_the_study(tmp_path: Path) -> None:
    path = _study(tmp_path, _config(random_state=0))
    _data(tmp_path, site_frames("iris", 3))
    data, notices = translate(_toml(path.read_text()), tmp_path, "s", [])
    assert data["params"]["random_state"] == 0
    assert any("leaves AdaBoost unseeded" in n for n in notices)


def _toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)
