"""The exactness proof: full-batch gradient descent with one local step per round, aggregated by
row-weighted FedAvg, is centralized gradient descent on the pooled rows — checked against plain
numpy gradient descent (no fedflow or torch code) to 1e-10 on 3 and 7 unbalanced sites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow.apps.base import Table  # noqa: E402
from fedflow.runtime.simulate import simulate  # noqa: E402
from fedflow.training.weights import from_safetensors  # noqa: E402

from .helpers import LINEAR_PLAN, write_plan  # noqa: E402

P, LR, ROUNDS = 3, 0.05, 6


def _sites(sizes: list[int]) -> tuple[dict[str, Table], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(len(sizes))
    n = sum(sizes)
    x = rng.normal(size=(n, P)) * np.array([1.0, 3.0, 0.5]) + np.array([0.0, 1.0, -2.0])
    y = x @ np.array([0.7, -1.3, 2.0]) + 0.5 + rng.normal(scale=0.3, size=n)
    tables, at = {}, 0
    for i, size in enumerate(sizes):
        cols = {f"x{j}": x[at : at + size, j] for j in range(P)}
        cols["y"] = y[at : at + size]
        tables[f"s{i}"] = Table(cols)
        at += size
    return tables, x, y


def _centralized_gd(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    w, b = np.zeros(P), 0.0
    for _ in range(ROUNDS):
        r = x @ w + b - y
        w, b = w - LR * 2 * (x.T @ r) / len(y), b - LR * 2 * r.mean()
    return w, b


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
@pytest.mark.parametrize(
    "sizes", [[7, 40, 113], [5, 9, 13, 60, 21, 150, 8]], ids=["3 sites", "7 sites"]
)
def test_one_step_fedavg_equals_centralized_gradient_descent(
    tmp_path: Path, sizes: list[int], strategy: str
) -> None:
    """With every site in every round, SCAFFOLD's correction c − c_i averages to zero over the
    sites (c is the row-weighted mean of the c_i), so it is the same descent; a wrong control
    update would move it."""
    plan = write_plan(tmp_path, LINEAR_PLAN.replace("{p}", str(P)))
    sites, x, y = _sites(sizes)
    params = {
        "plan": str(plan),
        "target": "y",
        "rounds": ROUNDS,
        "local_epochs": 1,
        "batch_size": 0,
        "lr": LR,
        "validation": 0.0,
        "strategy": strategy,
    }
    sim = simulate("train", params, sites, seed=11)
    weights, _ = from_safetensors(sim.done.artifacts["model-last.safetensors"], "last")
    w, b = _centralized_gd(x, y)
    assert weights["weight"].dtype == np.float64
    assert np.max(np.abs(weights["weight"].ravel() - w)) < 1e-10
    assert abs(float(weights["bias"][0]) - b) < 1e-10
    # the unweighted mean of the sites' updates is not the same descent (the sizes differ)
    unweighted = np.mean(
        [_centralized_gd(t.matrix(["x0", "x1", "x2"]), t["y"])[0] for t in sites.values()], axis=0
    )
    assert np.max(np.abs(unweighted - w)) > 1e-3


def _scaffold_reference(
    sites: dict[str, Table], steps: int, validation: float = 0.0, seed: int | None = None
) -> np.ndarray:
    """SCAFFOLD (Karimi et al. 2020, option II) for the linear model in numpy, full participation,
    full-batch local steps on each site's training rows (``validation`` of them held out as the
    study's seed draws them), the server averaging weights and controls by training rows."""
    from fedflow.training.engine import split_rows  # which rows are held out, nothing else

    data = []
    for name, t in sites.items():
        rows = split_rows(t.n_rows, validation, seed, name)[0]
        a = np.column_stack([t.matrix(["x0", "x1", "x2"]), np.ones(t.n_rows)])
        data.append((a[rows], t["y"][rows]))
    n = np.array([len(y) for _, y in data], dtype=float)
    share = n / n.sum()
    x = np.zeros(P + 1)
    c = np.zeros(P + 1)
    ci = [np.zeros(P + 1) for _ in data]
    for _ in range(ROUNDS):
        ys, deltas = [], []
        for k, (a, y) in enumerate(data):
            w = x.copy()
            for _ in range(steps):
                w = w - LR * (2 * a.T @ (a @ w - y) / len(y) + c - ci[k])
            deltas.append(-c + (x - w) / (steps * LR))
            ys.append(w)
        x = sum(s * w for s, w in zip(share, ys, strict=True))
        c = c + sum(s * d for s, d in zip(share, deltas, strict=True))
        ci = [cc + d for cc, d in zip(ci, deltas, strict=True)]
    return x


@pytest.mark.parametrize("validation", [0.0, 0.3])
def test_scaffold_with_several_local_steps_follows_the_reference(
    tmp_path: Path, validation: float
) -> None:
    plan = write_plan(tmp_path, LINEAR_PLAN.replace("{p}", str(P)))
    sites, _, _ = _sites([7, 40, 113] if validation == 0 else [20, 40, 113])
    params = {
        "plan": str(plan),
        "target": "y",
        "rounds": ROUNDS,
        "local_epochs": 3,
        "batch_size": 0,
        "lr": LR,
        "validation": validation,
        "strategy": "scaffold",
    }
    sim = simulate("train", params, sites, seed=11)
    weights, _ = from_safetensors(sim.done.artifacts["model-last.safetensors"], "last")
    got = np.append(weights["weight"].ravel(), weights["bias"])
    expected = _scaffold_reference(sites, 3, validation, 11)
    assert np.max(np.abs(got - expected)) < 1e-10
    fedavg = simulate("train", {**params, "strategy": "fedavg"}, sites, seed=11)
    plain, _ = from_safetensors(fedavg.done.artifacts["model-last.safetensors"], "last")
    assert np.max(np.abs(plain["weight"].ravel() - expected[:P])) > 1e-6  # the controls matter
