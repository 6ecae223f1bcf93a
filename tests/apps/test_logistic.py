"""logistic-regression: Newton iterates and iteration counts against a plain pooled Newton–Raphson,
what a site sends, default features, refusals. The agreement with statsmodels is in the fidelity
cases (tests/apps/cases/core.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedflow.apps.base import Table
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.apps.wire_spy import run_spied

_SPECTOR = ["GPA", "TUCE", "PSI"]


def _sites(frame: pd.DataFrame, n: int = 3, mode: str = "iid") -> dict[str, Table]:
    return {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, n, mode))}


def _pooled_newton(
    frame: pd.DataFrame, target: str, features: list[str], tol: float, max_iter: int
) -> tuple[np.ndarray, int, bool]:
    """Plain Newton–Raphson on the pooled rows from β = 0, with the documented stopping rule:
    return (β, number of steps taken, converged)."""
    x = np.column_stack([np.ones(len(frame)), frame[features].to_numpy(dtype=float)])
    y = frame[target].to_numpy(dtype=float)
    beta = np.zeros(x.shape[1])
    for step_count in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        step = np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]), x.T @ (y - p))
        beta = beta + step
        if np.max(np.abs(step)) <= tol * (1.0 + np.max(np.abs(beta))):
            return beta, step_count, True
    return beta, max_iter, False


@pytest.mark.parametrize("max_iter", [1, 2, 3, 4])
def test_max_iter_newton_steps_are_taken_exactly(max_iter: int) -> None:
    frame = dataset("spector")
    params = {"target": "GRADE", "features": _SPECTOR, "max_iter": max_iter}
    sim = simulate("logistic-regression", params, _sites(frame), min_count=1)
    expected, steps, converged = _pooled_newton(frame, "GRADE", _SPECTOR, 1e-10, max_iter)
    assert (steps, converged) == (max_iter, False)
    coef = np.array(list(sim.result["coefficients"].values()))
    np.testing.assert_allclose(coef, expected, rtol=1e-10)
    assert sim.result["iterations"] == max_iter
    assert sim.result["converged"] is False
    assert any("did not converge in" in note for note in sim.notes)
    assert sim.rounds == max_iter


@pytest.mark.parametrize(
    "name, target, features",
    [
        ("spector", "GRADE", _SPECTOR),
        ("breast_cancer", "target", ["mean_radius", "mean_texture", "mean_smoothness"]),
    ],
)
def test_stops_at_the_first_step_below_tol(name: str, target: str, features: list[str]) -> None:
    frame = dataset(name)
    params = {"target": target, "features": features}
    sim = simulate("logistic-regression", params, _sites(frame, 7, "unbalanced"), min_count=1)
    expected, steps, converged = _pooled_newton(frame, target, features, 1e-10, 50)
    assert converged
    assert sim.result["iterations"] == steps
    assert sim.result["converged"] is True and not sim.notes
    coef = np.array(list(sim.result["coefficients"].values()))
    np.testing.assert_allclose(coef, expected, rtol=1e-12)


def test_replies_hold_aggregates_only() -> None:
    frame = dataset("breast_cancer")
    features = ["mean_radius", "mean_texture", "mean_smoothness"]
    spied = run_spied(
        "logistic-regression", {"target": "target", "features": features}, _sites(frame)
    )
    replies = spied.replies("newton")
    assert len(replies) == 3 * spied.result["iterations"]
    for reply in replies:
        assert set(reply) == {"gradient", "hessian", "loglik", "n"}
        assert np.shape(reply["gradient"]) == (4,) and np.shape(reply["hessian"]) == (4, 4)
    assert sum(r["n"] for r in replies[:3]) == len(frame)


def test_features_default_to_every_other_numeric_column() -> None:
    sim = simulate(
        "logistic-regression", {"target": "GRADE"}, _sites(dataset("spector")), min_count=1
    )
    assert sim.params.features == _SPECTOR
    assert list(sim.result["coefficients"]) == ["intercept", *_SPECTOR]


def test_a_target_other_than_0_1_is_refused_by_the_site() -> None:
    frame = dataset("spector").copy()
    frame.loc[5, "GRADE"] = 2
    with pytest.raises(DataError, match="only 0 and 1"):
        simulate("logistic-regression", {"target": "GRADE"}, _sites(frame), min_count=1)


def test_collinear_features_are_an_app_error() -> None:
    frame = dataset("spector").copy()
    frame["GPA2"] = 2 * frame["GPA"]
    with pytest.raises(AppError, match="singular"):
        simulate("logistic-regression", {"target": "GRADE"}, _sites(frame), min_count=1)
