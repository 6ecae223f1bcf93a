"""The ada-boost twin computes what FeatureCloud's ada-boost app (fc-boosting) computes.

References share no code with the twin: ``adaboost_reference.py`` runs the app's own computation
with scikit-learn's ``AdaBoostClassifier``, under scikit-learn 1.3.2 (the app's image: SAMME.R;
its output is ``adaboost_samme_r.json``) and under the installed scikit-learn (≥ 1.6: SAMME).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import AdaBoostClassifier

from fedflow.apps import Table
from fedflow.apps.adaboost import (
    EVAL_NAME,
    BoostedModel,
    FeatureCloudAdaBoost,
    Stumps,
    _unpack,
    eval_csv,
    fit_boosted,
    split_like_the_app,
)
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate
from tests.apps.adaboost_reference import CASES, LABEL, run_case, site_frames

TWIN = "fedflow.apps.adaboost:FeatureCloudAdaBoost"
SAMME_R = json.loads((Path(__file__).parent / "adaboost_samme_r.json").read_text())


def _params(case: dict[str, Any], **extra: Any) -> dict[str, Any]:
    params = {
        "label_col": LABEL,
        "test_size": case["test_size"],
        "n_estimators": case["n_estimators"],
        "learning_rate": case["learning_rate"],
        "random_state": case["random_state"],
        "metric": case["metric"],
    }
    params.update(extra)
    return params


def _sites(frames: list[pd.DataFrame]) -> dict[str, Table]:
    return {f"site-{i + 1}": Table.from_pandas(f) for i, f in enumerate(frames)}


def _app_eval_file(metric: str, local: float, global_: float) -> bytes:
    """``write_results`` of the app: its DataFrame written by pandas."""
    frame = pd.DataFrame(
        index=["local_model", "global_model"], columns=[metric], data=[local, global_]
    )
    return frame.to_csv().encode()


def _check_run(sim: Any, reference: dict[str, Any]) -> None:
    case = reference["case"]
    assert list(sim.result["sites"]) == [f"site-{i + 1}" for i in range(case["sites"])]
    correct = 0
    for i, expected in enumerate(reference["sites"]):
        site = f"site-{i + 1}"
        got = sim.result["sites"][site]
        assert got["local_model"] == pytest.approx(expected["local_model"], abs=1e-15)
        assert got["global_model"] == pytest.approx(expected["global_model"], abs=1e-15)
        assert got["n_test"] == expected["n_test"]
        assert sim.site_outputs[site][EVAL_NAME] == _app_eval_file(
            case["metric"], expected["local_model"], expected["global_model"]
        )
        correct += int(round(expected["global_model"] * expected["n_test"])) * (
            "acc" in case["metric"]
        )
    if "acc" in case["metric"]:
        n_test = sum(s["n_test"] for s in reference["sites"])
        assert sim.result["test_accuracy"] == pytest.approx(correct / n_test, abs=1e-15)


def test_the_samme_r_reference_is_scikit_learn_1_3() -> None:
    assert SAMME_R["scikit-learn"] == "1.3.2" and SAMME_R["algorithm"] == "SAMME.R"
    assert [c["case"] for c in SAMME_R["cases"]] == CASES
    assert {c["dataset"] for c in CASES} == {"breast_cancer", "iris", "wine"}


@pytest.mark.parametrize("index", range(len(CASES)))
def test_samme_r_twin_equals_the_app_run_with_scikit_learn_1_3(index: int) -> None:
    reference = SAMME_R["cases"][index]
    case = reference["case"]
    frames = site_frames(case["dataset"], case["sites"])
    sim = simulate(TWIN, _params(case), _sites(frames), min_count=5)
    _check_run(sim, reference)
    assert sim.result["n_stumps"] == sum(
        sim.result["sites"][s]["stumps"] for s in sim.result["sites"]
    )
    assert sim.notes == []


@pytest.mark.parametrize("index", range(len(CASES)))
def test_samme_r_global_model_predicts_and_decides_as_scikit_learn_1_3(index: int) -> None:
    """The combined model's decision values on each test row, not only its scores."""
    reference = SAMME_R["cases"][index]
    case = reference["case"]
    models, tests = [], []
    for frame in site_frames(case["dataset"], case["sites"]):
        y = frame[LABEL].to_numpy()
        x = frame.drop(columns=[LABEL]).to_numpy()
        x_train, x_test, y_train, y_test = split_like_the_app(
            x, y, case["test_size"], case["random_state"]
        )
        models.append(
            fit_boosted(
                x_train,
                y_train,
                n_estimators=case["n_estimators"],
                learning_rate=case["learning_rate"],
                random_state=case["random_state"],
                algorithm="SAMME.R",
            )
        )
        tests.append(x_test)
    first = models[0]
    combined = BoostedModel(
        [s for m in models for s in m.stumps],
        first.weights,
        first.classes,
        tests[0].shape[1],
        "SAMME.R",
    )
    for x_test, expected in zip(tests, reference["sites"], strict=True):
        np.testing.assert_allclose(
            combined.decision_function(x_test), expected["decision"], rtol=1e-12, atol=1e-12
        )
        assert combined.predict(x_test).tolist() == expected["predictions"]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_samme_twin_equals_the_app_run_with_installed_scikit_learn(index: int) -> None:
    """scikit-learn ≥ 1.6 (SAMME only): the app's global model counts only the first site's
    stumps; the twin with algorithm = "SAMME" computes that, live against scikit-learn."""
    assert not hasattr(AdaBoostClassifier(), "algorithm") or (
        AdaBoostClassifier().algorithm in ("SAMME", "deprecated")
    )
    case = CASES[index]
    reference = run_case(case)
    sim = simulate(
        TWIN,
        _params(case, algorithm="SAMME"),
        _sites(site_frames(case["dataset"], case["sites"])),
        min_count=5,
    )
    _check_run(sim, reference)
    first = sim.result["sites"]["site-1"]
    assert first["global_model"] == first["local_model"]  # only site-1's stumps count
    assert any("only site-1's stumps count" in n for n in sim.notes)


@pytest.mark.parametrize("loader", [load_breast_cancer, load_iris, load_wine])
@pytest.mark.parametrize("learning_rate", [1.0, 0.3])
def test_one_site_fit_is_scikit_learns_adaboost(loader: Any, learning_rate: float) -> None:
    x, y = loader(return_X_y=True)
    ref = AdaBoostClassifier(n_estimators=25, learning_rate=learning_rate, random_state=5)
    ref.fit(x, y)
    got = fit_boosted(
        x, y, n_estimators=25, learning_rate=learning_rate, random_state=5, algorithm="SAMME"
    )
    assert len(got.stumps) == len(ref.estimators_)
    np.testing.assert_array_equal(got.weights, ref.estimator_weights_)
    np.testing.assert_array_equal(got.decision_function(x), ref.decision_function(x))
    np.testing.assert_array_equal(got.predict(x), ref.predict(x))
    for stump, tree in zip(got.stumps, ref.estimators_, strict=True):
        assert stump.feature[0] == tree.tree_.feature[0]
        assert stump.threshold[0] == tree.tree_.threshold[0]


def test_a_perfect_first_stump_stops_boosting_as_scikit_learn_does() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    for algorithm in ("SAMME.R", "SAMME"):
        got = fit_boosted(
            x, y, n_estimators=10, learning_rate=1.0, random_state=1, algorithm=algorithm
        )
        assert len(got.stumps) == 1 and got.weights.tolist() == [1.0] + [0.0] * 9
    ref = AdaBoostClassifier(n_estimators=10, random_state=1).fit(x, y)
    assert len(ref.estimators_) == 1 and ref.estimator_weights_.tolist() == [1.0] + [0.0] * 9


@pytest.mark.parametrize(
    "values", [(0.5, 0.75), (1.0, 0.1 + 0.2), (0.0, -0.125), (float("nan"), 1.0)]
)
def test_the_eval_file_is_what_the_apps_pandas_writes(values: tuple[float, float]) -> None:
    assert eval_csv("matth", *values) == _app_eval_file("matth", *values)


def _holed(frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)
    holed = []
    for frame in frames:
        frame = frame.copy()
        for column in frame.columns[:5]:
            frame.loc[rng.random(len(frame)) < 0.05, column] = np.nan
        holed.append(frame)
    return holed


def test_missing_data_drop_is_the_studys_dropna() -> None:
    """The app's ``dropna()`` before the split: the study's ``dropna = true`` drops the same
    rows at the site (a row with a gap in any column)."""
    case = dict(CASES[0], missing_data="drop")
    holed = _holed(site_frames(case["dataset"], case["sites"]))
    reference = run_case(case, holed)
    sim = simulate(
        TWIN,
        _params(case, missing_data="drop", algorithm="SAMME"),
        _sites(holed),
        min_count=5,
        dropna=True,
    )
    _check_run(sim, reference)
    assert sim.result["missing_data"] == "drop"


def test_gaps_to_fill_with_the_mean_stop_the_site() -> None:
    """Not reproduced: the app's mean / median filling. A site refuses missing values."""
    case = CASES[0]
    holed = _holed(site_frames(case["dataset"], case["sites"]))
    with pytest.raises(DataError, match="missing value"):
        simulate(TWIN, _params(case, missing_data="mean"), _sites(holed), min_count=5)


def test_a_lead_site_heads_the_combined_model() -> None:
    case = CASES[1]
    frames = site_frames(case["dataset"], case["sites"])
    reference = run_case(case, [frames[1], frames[0], frames[2]])  # site-2's model first
    sim = simulate(
        TWIN, _params(case, algorithm="SAMME", lead_site="site-2"), _sites(frames), min_count=5
    )
    assert sim.result["lead_site"] == "site-2"
    for name, expected in zip(["site-2", "site-1", "site-3"], reference["sites"], strict=True):
        assert sim.result["sites"][name]["global_model"] == expected["global_model"]


def test_an_unseeded_app_is_seeded_from_the_study() -> None:
    case = CASES[2]
    sites = _sites(site_frames(case["dataset"], case["sites"]))
    runs = [
        simulate(TWIN, _params(case, random_state=None), sites, seed=seed, min_count=5)
        for seed in (11, 11)
    ]
    assert runs[0].result == runs[1].result
    assert any("leaves AdaBoost unseeded" in n for n in runs[0].notes)


def test_compare_pooled_scikit_learn_within_tolerance() -> None:
    app = FeatureCloudAdaBoost()
    for case in CASES:
        frames = site_frames(case["dataset"], case["sites"])
        sim = simulate(TWIN, _params(case), _sites(frames), min_count=5)
        pooled = pd.concat(frames, ignore_index=True)
        params = app.parse_params(_params(case))
        central = app.comparable(app.centralized(pooled, params))
        federated = app.comparable(sim.result)
        assert federated["features"] == central["features"]
        assert federated["classes"] == central["classes"]
        rtol, atol = app.tolerances["test_accuracy"]
        assert abs(federated["test_accuracy"] - central["test_accuracy"]) <= atol


# -- refusals ------------------------------------------------------------------------------------
def _two_sites() -> list[pd.DataFrame]:
    return site_frames("iris", 2)


def test_sites_with_different_classes_are_refused() -> None:
    frames = _two_sites()
    frames[1] = frames[1][frames[1][LABEL] != 2]
    with pytest.raises(DataError, match="site site-2 holds the classes .* same classes"):
        simulate(TWIN, _params(CASES[1]), _sites(frames), min_count=5)


def test_sites_with_columns_in_another_order_are_refused() -> None:
    frames = _two_sites()
    frames[1] = frames[1][list(reversed(frames[1].columns[:-1])) + [LABEL]]
    with pytest.raises(DataError, match="differ from site site-1's.*by position"):
        simulate(TWIN, _params(CASES[1]), _sites(frames), min_count=5)


def test_a_missing_label_and_a_text_feature_are_refused() -> None:
    frames = _two_sites()
    with pytest.raises(DataError, match="label_col 'nope' is not a column"):
        simulate(TWIN, _params(CASES[1], label_col="nope"), _sites(frames), min_count=5)
    texty = [f.assign(code="x") for f in frames]
    with pytest.raises(DataError, match="column code holds text"):
        simulate(TWIN, _params(CASES[1]), _sites(texty), min_count=5)


def test_bad_parameters_and_unknown_lead_site_are_refused() -> None:
    sites = _sites(_two_sites())
    for bad, message in (
        ({"test_size": 1.5}, "test_size must be"),
        ({"n_estimators": 0}, "n_estimators must be at least 1"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"algorithm": "real"}, "algorithm"),
    ):
        with pytest.raises(AppError, match=message):
            simulate(TWIN, _params(CASES[1], **bad), sites, min_count=5)
    with pytest.raises(AppError, match="lead_site 'x' is not a site"):
        simulate(TWIN, _params(CASES[1], lead_site="x"), sites, min_count=5)


def test_malformed_stumps_are_refused() -> None:
    good = dict(
        node_counts=np.array([3]),
        feature=np.array([0, -1, -1]),
        threshold=np.array([0.5, 0.0, 0.0]),
        left=np.array([1, -1, -1]),
        right=np.array([2, -1, -1]),
        value=np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]),
    )
    assert len(_unpack(Stumps(**good), 1, 2, "s")) == 1
    for change, message in (
        ({"node_counts": np.array([0])}, "positive node counts"),
        ({"feature": np.array([0, -1])}, "do not hold 3 nodes"),
        ({"value": np.ones((3, 3))}, "2 class proportions"),
        ({"left": np.array([0, -1, -1])}, "child indices"),
        ({"feature": np.array([4, -1, -1])}, "feature index out of range"),
    ):
        with pytest.raises(AppError, match=f"s sent malformed stumps: .*{message}"):
            _unpack(Stumps(**(good | change)), 1, 2, "s")


def test_the_app_declares_why_it_is_neither_secure_nor_streaming() -> None:
    assert (
        isinstance(FeatureCloudAdaBoost.secure, str) and "not sums" in FeatureCloudAdaBoost.secure
    )
    assert FeatureCloudAdaBoost.streaming is False
