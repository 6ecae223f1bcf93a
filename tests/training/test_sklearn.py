"""Training plans whose model is a scikit-learn estimator with ``partial_fit``: weights are
``coef_`` and ``intercept_``, the same bytes run after run, one site's round is scikit-learn's
own ``partial_fit``, and predict scores with the estimator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # safetensors comes with the [torch] extra
from sklearn.linear_model import SGDClassifier  # noqa: E402

from fedflow.apps.train import derive_seed  # noqa: E402
from fedflow.errors import AppError  # noqa: E402
from fedflow.runtime.simulate import simulate  # noqa: E402
from fedflow.training.app import Train, TrainedModel  # noqa: E402
from fedflow.training.weights import from_safetensors  # noqa: E402

from .helpers import blobs, write_plan  # noqa: E402

PLAN = """
import numpy as np
from sklearn.linear_model import SGDClassifier

classes = [0, 1, 2]


def model():
    return SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, alpha=1e-4)


def loss(output, target):
    z = output - output.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(target)), target].mean()


def metrics(output, target):
    return {"accuracy": float(np.mean(output.argmax(axis=1) == target))}
"""


def _params(plan: Path, **extra: object) -> dict[str, object]:
    return {"plan": str(plan), "target": "label", "rounds": 3, "metric": "accuracy", **extra}


def test_an_sklearn_plan_trains_reproducibly(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, PLAN)
    sites = blobs([60, 45, 80])
    a = simulate("train", _params(plan), sites, seed=2)
    b = simulate("train", _params(plan), sites, seed=2)
    key = "model-last.safetensors"
    assert a.done.artifacts[key] == b.done.artifacts[key]
    weights, _ = from_safetensors(a.done.artifacts[key], "last")
    assert weights["coef"].shape == (3, 4) and weights["intercept"].shape == (3,)
    history = a.result["history"]
    assert history[0]["global"]["accuracy"] < history[3]["global"]["accuracy"]
    with pytest.raises(AppError, match="needs a torch model"):
        simulate("train", _params(plan, strategy="scaffold"), sites, seed=2)


def test_one_site_one_round_is_sklearns_own_partial_fit(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, PLAN)
    sites = blobs([70])
    one = _params(plan, rounds=1, validation=0.0, local_epochs=2, metric="loss")
    sim = simulate("train", one, sites, seed=9)
    weights, _ = from_safetensors(sim.done.artifacts["model-last.safetensors"], "last")
    table = sites["site0"]
    x = table.matrix(["x0", "x1", "x2", "x3"])
    y = table["label"]
    seed = derive_seed(9, "train", "site0", 1) % 2**32
    ref = SGDClassifier(
        loss="log_loss", learning_rate="constant", eta0=0.01, alpha=1e-4, random_state=seed
    )
    for _ in range(2):
        ref.partial_fit(x, y, classes=[0, 1, 2])
    # FedAvg of one site is (n·w)/n: equal to w up to one rounding
    np.testing.assert_allclose(weights["coef"], ref.coef_, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(weights["intercept"], ref.intercept_, rtol=1e-14, atol=1e-16)
    ref.coef_, ref.intercept_ = weights["coef"], weights["intercept"]
    # predict: the saved weights in the plan's estimator score as scikit-learn does
    model = TrainedModel(
        Train().plan(Train.parse_params(_params(plan))), _flat(weights), ["x0", "x1", "x2", "x3"]
    )
    columns = model.predict_columns(x)
    np.testing.assert_array_equal(columns["prediction"], ref.predict(x))
    np.testing.assert_array_equal(columns["output_1"], ref.decision_function(x)[:, 1])


def _flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([weights["coef"].ravel(), weights["intercept"].ravel()])
