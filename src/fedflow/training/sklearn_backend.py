"""scikit-learn linear estimators with ``partial_fit`` (SGDClassifier, SGDRegressor, Perceptron,
PassiveAggressive…) as training plans: the weights are ``coef_`` and ``intercept_`` (float64).

A classifier plan must name its classes (``classes = [0, 1, …]``): every site and the
coordinator then agree on the shape of ``coef_`` even when a site lacks a class. Each round a site
builds a fresh estimator from the plan, sets the global ``coef_`` and ``intercept_``, sets
``random_state`` from the seed, the site and the round, and calls ``partial_fit`` once per local
epoch (scikit-learn's SGD goes row by row: ``batch_size`` does not apply; the plan's estimator
settings — learning rate schedule, ``eta0``, penalty — are its own; ``lr`` does not apply).
The estimator's outputs handed to ``loss`` and ``metrics`` are ``decision_function(x)`` for a
classifier (one column per class, or one for two classes) and ``predict(x)`` for a regressor, as
numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedflow.apps.train import TrainParams
from fedflow.errors import AppError
from fedflow.training.engine import Layout
from fedflow.training.plan import Plan

__all__ = ["is_sklearn", "sk_evaluate", "sk_layout", "sk_model_with", "sk_output", "sk_train"]


def is_sklearn(model: Any) -> bool:
    """Whether ``model`` is a scikit-learn style estimator with ``partial_fit``."""
    return callable(getattr(model, "partial_fit", None)) and hasattr(model, "get_params")


def _classes(plan: Plan, model: Any) -> np.ndarray | None:
    from sklearn.base import is_classifier

    if not is_classifier(model):
        return None
    classes = getattr(plan.module, "classes", None)
    if classes is None or len(classes) < 2:
        raise AppError(
            f"plan {plan.path}: a scikit-learn classifier plan must list its classes "
            "(classes = [0, 1, …])"
        )
    return np.asarray(classes)


def sk_layout(plan: Plan, model: Any, n_features: int) -> Layout:
    """The weights of the plan's estimator for ``n_features`` inputs: coef and intercept."""
    classes = _classes(plan, model)
    if classes is None:
        shapes: tuple[tuple[int, ...], ...] = ((n_features,), (1,))
    else:
        k = 1 if len(classes) == 2 else len(classes)
        shapes = ((k, n_features), (k,))
    return Layout(("coef", "intercept"), shapes, np.dtype(np.float64))


def sk_model_with(plan: Plan, flat: np.ndarray, n_features: int) -> tuple[Any, Layout]:
    """A fresh estimator from the plan holding the flat weights ``flat``."""
    model = plan.model()
    layout = sk_layout(plan, model, n_features)
    named = layout.named(np.asarray(flat, dtype=np.float64))
    model.coef_ = named["coef"].copy()
    model.intercept_ = named["intercept"].copy()
    model.n_features_in_ = n_features
    classes = _classes(plan, model)
    if classes is not None:
        model.classes_ = classes
    return model, layout


def sk_output(model: Any, x: np.ndarray) -> np.ndarray:
    """decision_function for a classifier (rows × classes, or one column), else predict."""
    classes = getattr(model, "classes_", None)
    if classes is not None:
        return np.asarray(model.decision_function(x), dtype=np.float64)
    return np.asarray(model.predict(x), dtype=np.float64)


def sk_evaluate(plan: Plan, model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``loss`` and the plan's metrics of the estimator on (x, y)."""
    if len(y) == 0:
        return {}
    out = sk_output(model, x)
    metrics = {"loss": float(plan.loss(out, y))}
    metrics.update(plan.metrics(out, y))
    return metrics


def sk_train(
    plan: Plan,
    model: Any,
    layout: Layout,
    x: np.ndarray,
    y: np.ndarray,
    params: TrainParams,
    seed: int,
) -> tuple[np.ndarray, float, int]:
    """``local_epochs`` calls of ``partial_fit`` (shuffled by ``seed``); return the flat weights,
    the plan's loss on the training rows afterwards, and the epochs run."""
    if "random_state" in model.get_params():
        model.set_params(random_state=seed % 2**32)
    classes = getattr(model, "classes_", None)
    for _ in range(params.local_epochs):
        if classes is not None:
            model.partial_fit(x, y, classes=classes)
        else:
            model.partial_fit(x, y)
    flat = layout.flat({"coef": model.coef_, "intercept": np.atleast_1d(model.intercept_)})
    return flat, float(plan.loss(sk_output(model, x), y)), params.local_epochs
