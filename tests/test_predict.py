"""``fedflow predict``: scoring new data with the forest a random-forest run saved."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedflow.apps.base import Table
from fedflow.errors import AppError, DataError
from fedflow.results.predict import Model, format_csv, load_model, predict
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.helpers import write_study


def _run_dir(tmp_path: Path, name: str, params: dict, n_sites: int = 3) -> tuple[Path, list]:
    """Simulate a run and write its run directory as the runtime does; return it and the parts."""
    parts = split(dataset(name), n_sites, "iid")
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    sim = simulate("random-forest", params, sites, seed=0)
    folder = tmp_path / "run"
    folder.mkdir()
    doc = {"app": "random-forest", "params": {**params}, "result": sim.result}
    (folder / "result.json").write_text(json.dumps(doc))
    for file, content in sim.done.artifacts.items():
        (folder / file).write_bytes(content)
    return folder, [sim, parts]


def test_classification_predictions_reproduce_the_training_accuracy(tmp_path: Path) -> None:
    run_dir, (sim, parts) = _run_dir(
        tmp_path, "breast_cancer", {"target": "target", "n_estimators": 12}
    )
    files = []
    for i, part in enumerate(parts):  # CSV and TSV, several files, target column kept
        path = tmp_path / f"part{i}.{'tsv' if i == 1 else 'csv'}"
        part.to_csv(path, index=False, sep="\t" if i == 1 else ",")
        files.append(path)
    out = tmp_path / "pred.csv"
    table = predict(run_dir, files, out=out)
    assert table.columns == ["prediction", "probability_0", "probability_1"]
    truth = pd.concat(parts)["target"].to_numpy()
    assert table.n_rows == len(truth)
    assert np.mean(table["prediction"] == truth) == sim.result["accuracy"]
    np.testing.assert_allclose(table["probability_0"] + table["probability_1"], 1.0)
    written = pd.read_csv(out, float_precision="round_trip")
    assert list(written.columns) == table.columns
    np.testing.assert_array_equal(written["probability_1"].to_numpy(), table["probability_1"])
    np.testing.assert_array_equal(written["prediction"].to_numpy(), table["prediction"])


def test_regression_predictions_reproduce_the_training_rmse(tmp_path: Path, capsys) -> None:
    run_dir, (sim, parts) = _run_dir(tmp_path, "diabetes", {"target": "target", "n_estimators": 9})
    pooled = pd.concat(parts).drop(columns="target")  # new data need not hold the target
    data = tmp_path / "new.csv"
    pooled.to_csv(data, index=False)
    table = predict(run_dir, [data])  # no out: CSV on standard output
    y = pd.concat(parts)["target"].to_numpy()
    rmse = float(np.sqrt(np.mean((y - table["prediction"]) ** 2)))
    assert rmse == pytest.approx(sim.result["rmse"], rel=1e-12)
    printed = capsys.readouterr().out
    assert printed == format_csv(table)
    assert printed.splitlines()[0] == "prediction" and len(printed.splitlines()) == len(y) + 1


def test_text_labels_are_predicted_as_text(tmp_path: Path) -> None:
    frame = dataset("iris").copy()
    frame["species"] = np.array(["setosa", "versicolor", "virginica"])[frame.pop("target")]
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, 3, "iid"))}
    sim = simulate("random-forest", {"target": "species", "n_estimators": 6}, sites)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps({"app": "random-forest", "result": sim.result}))
    (run_dir / "forest.json").write_bytes(sim.done.artifacts["forest.json"])
    data = tmp_path / "iris.csv"
    frame.to_csv(data, index=False)
    table = predict(run_dir, [data], out=tmp_path / "out.csv")
    assert set(table["prediction"]) <= {"setosa", "versicolor", "virginica"}
    assert "probability_virginica" in table.columns
    assert np.mean(table["prediction"] == frame["species"].to_numpy()) > 0.9


def test_missing_or_bad_feature_columns_name_file_and_column(tmp_path: Path) -> None:
    run_dir, (sim, parts) = _run_dir(tmp_path, "wine", {"target": "target", "n_estimators": 6})
    good = tmp_path / "good.csv"
    parts[0].to_csv(good, index=False)
    missing = tmp_path / "missing.csv"
    parts[1].drop(columns="alcohol").to_csv(missing, index=False)
    with pytest.raises(DataError, match=r"missing.csv: column 'alcohol' is missing") as info:
        predict(run_dir, [good, missing], out=tmp_path / "o.csv")
    assert info.value.column == "alcohol" and info.value.file.endswith("missing.csv")
    holes = parts[1].copy().astype({"magnesium": float})
    holes.loc[3, "magnesium"] = np.nan
    gaps = tmp_path / "gaps.csv"
    holes.to_csv(gaps, index=False)
    with pytest.raises(DataError, match=r"gaps.csv: column 'magnesium' has 1 missing value"):
        predict(run_dir, [gaps], out=tmp_path / "o.csv")
    text = parts[1].copy().astype({"hue": str})
    text.loc[0, "hue"] = "high"
    words = tmp_path / "words.csv"
    text.to_csv(words, index=False)
    with pytest.raises(DataError, match=r"words.csv: column 'hue' is not numeric"):
        predict(run_dir, [words], out=tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_run_directories_without_a_forest_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("x\n1\n")
    with pytest.raises(DataError, match="does not exist"):
        predict(tmp_path / "nowhere", [data])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(DataError, match=r"result.json does not exist"):
        load_model(run_dir)
    (run_dir / "result.json").write_text(json.dumps({"app": "stats", "result": {}}))
    with pytest.raises(AppError, match="the run used app 'stats', which saves no model") as info:
        load_model(run_dir)
    assert "apps that do: random-forest" in str(info.value)
    (run_dir / "result.json").write_text(json.dumps({"app": "no-such-app", "result": {}}))
    with pytest.raises(AppError, match="unknown app 'no-such-app'"):
        load_model(run_dir)
    (run_dir / "result.json").write_text(json.dumps({"result": {}}))
    with pytest.raises(DataError, match="names no app"):
        load_model(run_dir)
    (run_dir / "result.json").write_text(json.dumps({"app": "random-forest", "result": {}}))
    with pytest.raises(DataError, match=r"forest.json does not exist"):
        load_model(run_dir)
    (run_dir / "forest.json").write_text('{"format": "fedflow-forest"')
    with pytest.raises(DataError, match=r"forest.json: not a fedflow forest file"):
        load_model(run_dir)


def test_end_to_end_run_then_cli_predict(tmp_path: Path, capsys) -> None:
    from fedflow.cli import main
    from fedflow.connectors.memory import MemoryConnector
    from fedflow.runtime import arun_study
    from fedflow.study import load_study

    parts = split(dataset("breast_cancer"), 3, "iid")
    names = {"berlin": "berlin.csv", "vienna": "vienna.csv", "zurich": "zurich.csv"}
    for part, file in zip(parts, names.values(), strict=True):
        part.to_csv(tmp_path / file, index=False)
    study_path = write_study(
        tmp_path,
        """
        name = "forest"
        app = "random-forest"
        [params]
        target = "target"
        n_estimators = 9
        """,
        names,
    )
    study = load_study(study_path)
    connectors = {name: MemoryConnector(name) for name in names}
    run = asyncio.run(
        arun_study(study, connectors=connectors, command=["test"], out=tmp_path / "run")
    )
    assert run.status == "completed"
    out = tmp_path / "pred.csv"
    code = main(["predict", str(tmp_path / "run"), str(tmp_path / "berlin.csv"), "--out", str(out)])
    assert code == 0
    predicted = pd.read_csv(out)
    assert len(predicted) == len(parts[0])
    assert np.mean(predicted["prediction"] == parts[0]["target"]) > 0.9
    code = main(["predict", str(tmp_path / "run"), str(tmp_path / "nothere.csv")])
    assert code == 2
    assert "nothere.csv" in capsys.readouterr().err


def test_the_app_loads_its_own_model_from_the_run_files(tmp_path: Path) -> None:
    from fedflow.apps.forest import RandomForest

    run_dir, (sim, parts) = _run_dir(tmp_path, "iris", {"target": "target", "n_estimators": 6})
    model = load_model(run_dir)  # resolved by the app name in result.json
    assert isinstance(model, Model)
    direct = RandomForest.load_model({"forest.json": sim.done.artifacts["forest.json"]})
    x = pd.concat(parts)[list(model.features)].to_numpy(dtype=float)
    columns = model.predict_columns(x)
    assert list(columns) == ["prediction", "probability_0", "probability_1", "probability_2"]
    for name, values in direct.predict_columns(x).items():
        np.testing.assert_array_equal(values, columns[name])
    with pytest.raises(KeyError):
        RandomForest.load_model({})
    with pytest.raises(DataError, match=r"elsewhere/forest.json: not a fedflow forest file"):
        RandomForest.load_model({"forest.json": b"[]"}, "elsewhere")
