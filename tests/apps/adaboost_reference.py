"""FeatureCloud's ada-boost app (github.com/FeatureCloud/fc-boosting) computed as its own code
does, with whichever scikit-learn is installed: the reference of ``tests/apps/test_adaboost.py``.

It shares no code with fedflow: per site ``set_X_y`` (label column out, the rest as features),
``train_test_split(..., stratify=y, random_state=random_state)``,
``AdaBoostClassifier(n_estimators, learning_rate=float(learning_rate),
random_state=random_state or None)`` on the training rows, the local score; then the
coordinator's ``global_model.estimators_ = global_model.estimators_ + model.estimators_`` over
the sites' models in order, and each site's score of ``global_model.predict`` on its test rows.

The app's image runs scikit-learn 1.3 (Python 3.8), whose AdaBoost default is SAMME.R, which
scikit-learn 1.6 removed. ``adaboost_samme_r.json`` holds this script's output under
scikit-learn 1.3.2, made with::

    python -m venv /tmp/sk13 && /tmp/sk13/bin/pip install scikit-learn==1.3.2 "numpy<2" pandas
    /tmp/sk13/bin/python tests/apps/adaboost_reference.py > tests/apps/adaboost_samme_r.json

Under the installed scikit-learn (≥ 1.6: SAMME) the tests call ``run_case`` directly.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn import datasets
from sklearn.ensemble import AdaBoostClassifier
from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score
from sklearn.model_selection import train_test_split

LABEL = "health_status"

CASES: list[dict[str, Any]] = [
    {
        "dataset": "breast_cancer",
        "sites": 3,
        "n_estimators": 20,
        "learning_rate": 1.0,
        "random_state": 42,
        "test_size": 0.3,
        "metric": "matth",
    },
    {
        "dataset": "iris",
        "sites": 3,
        "n_estimators": 20,
        "learning_rate": 0.5,
        "random_state": 7,
        "test_size": 0.3,
        "metric": "accuracy",
    },
    {
        "dataset": "wine",
        "sites": 2,
        "n_estimators": 15,
        "learning_rate": 1.0,
        "random_state": 42,
        "test_size": 0.25,
        "metric": "acc",
    },
    {
        "dataset": "breast_cancer",
        "sites": 4,
        "n_estimators": 10,
        "learning_rate": 0.8,
        "random_state": 3,
        "test_size": 0.2,
        "metric": "roc_auc",
    },
]


def site_frames(dataset: str, sites: int) -> list[pd.DataFrame]:
    """The dataset's rows dealt to ``sites`` sites in turn (row i to site i mod sites), the
    label last, named ``health_status`` as in the original's workflow."""
    bunch = getattr(datasets, f"load_{dataset}")(as_frame=True)
    frame = bunch.frame.rename(columns={"target": LABEL})
    return [frame.iloc[i::sites].reset_index(drop=True) for i in range(sites)]


def _score(metric: str, y_true: Any, y_pred: Any) -> float:
    if "acc" in metric:
        return float(accuracy_score(y_true, y_pred))
    if "matth" in metric:
        return float(matthews_corrcoef(y_true, y_pred))
    if "roc" in metric or "auc" in metric:
        return float(roc_auc_score(y_true, y_pred))
    return float(accuracy_score(y_true, y_pred))


def run_case(case: dict[str, Any], frames: list[pd.DataFrame] | None = None) -> dict[str, Any]:
    """The app on one case (on ``frames`` when given): per site its local and global scores,
    the global model's predictions and decision values on its test rows."""
    if frames is None:
        frames = site_frames(case["dataset"], case["sites"])
    rs = case["random_state"]
    models, tests, local = [], [], []
    for data in frames:
        df = data.copy()
        missing_data = case.get("missing_data")  # read_input's handling, before set_X_y
        if missing_data == "mean":
            df.fillna(df.mean(), inplace=True)
        elif missing_data == "median":
            df.fillna(df.median(), inplace=True)
        elif missing_data == "drop":
            df.dropna(inplace=True)
        y = np.array(df.loc[:, LABEL])
        x = np.array(df.drop(LABEL, axis=1))
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=case["test_size"], stratify=y, random_state=rs
        )
        model = AdaBoostClassifier(
            n_estimators=case["n_estimators"],
            learning_rate=float(case["learning_rate"]),
            random_state=rs if rs else None,
        ).fit(x_train, y_train)
        models.append(model)
        tests.append((x_test, y_test))
        local.append(_score(case["metric"], y_test, model.predict(x_test)))
    global_model = copy.deepcopy(models[0])
    for model in models[1:]:
        global_model.estimators_ = global_model.estimators_ + model.estimators_
    out = []
    for (x_test, y_test), local_score in zip(tests, local, strict=True):
        pred = global_model.predict(x_test)
        out.append(
            {
                "local_model": local_score,
                "global_model": _score(case["metric"], y_test, pred),
                "n_test": len(y_test),
                "predictions": pred.tolist(),
                "decision": global_model.decision_function(x_test).tolist(),
            }
        )
    return {"case": case, "sites": out}


def main() -> None:
    algorithm = getattr(AdaBoostClassifier(), "algorithm", "SAMME")
    json.dump(
        {
            "scikit-learn": sklearn.__version__,
            "algorithm": algorithm,
            "cases": [run_case(case) for case in CASES],
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
