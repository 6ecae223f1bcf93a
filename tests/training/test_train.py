"""Federated training in memory: bit-identical repeats, what the sites return, sampling, the
server strategies, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow.errors import AppError  # noqa: E402
from fedflow.runtime.simulate import simulate  # noqa: E402
from fedflow.training.weights import from_safetensors  # noqa: E402

from .helpers import MLP_PLAN, blobs, mlp_params, write_plan  # noqa: E402


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path, MLP_PLAN)


def test_the_same_study_and_seed_give_identical_bytes(plan: Path) -> None:
    sites = blobs([60, 45, 80])
    first = simulate("train", mlp_params(plan), sites, seed=3)
    second = simulate("train", mlp_params(plan), sites, seed=3)
    for name in ("model-last.safetensors", "model-best.safetensors", "plan.py"):
        assert first.done.artifacts[name] == second.done.artifacts[name]
    assert first.result["history"] == second.result["history"]
    other = simulate("train", mlp_params(plan), sites, seed=4)
    assert (
        other.done.artifacts["model-last.safetensors"]
        != first.done.artifacts["model-last.safetensors"]
    )


def test_rounds_validate_and_keep_the_best_model(plan: Path) -> None:
    sim = simulate("train", mlp_params(plan, rounds=4), blobs([60, 45, 80]), seed=1)
    result = sim.result
    assert sim.rounds == 5  # four training rounds and one validation of the last model
    history = result["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3, 4]
    for h in history:  # every model was validated at every site
        assert set(h["global_sites"]) == {"site0", "site1", "site2"}
        assert 0 <= h["global"]["accuracy"] <= 1
    for h in history[1:]:
        assert set(h["local"]) == {"loss", "accuracy"} and h["train_loss"] > 0
    # held-out rows: a fifth of each site, seeded
    assert [history[0]["global_sites"][s]["val_rows"] for s in ("site0", "site1", "site2")] == [
        12,
        9,
        16,
    ]
    # pooled validation accuracy is the row-weighted mean of the sites'
    sites = history[2]["global_sites"]
    pooled = sum(v["val_rows"] * v["accuracy"] for v in sites.values()) / 37
    assert history[2]["global"]["accuracy"] == pytest.approx(pooled, abs=1e-15)
    best = max(range(5), key=lambda k: (history[k]["global"]["accuracy"], -k))
    assert result["best_round"] == best
    assert result["best"] == history[best]["global"]
    last, meta_last = from_safetensors(sim.done.artifacts["model-last.safetensors"], "last")
    best_w, meta_best = from_safetensors(sim.done.artifacts["model-best.safetensors"], "best")
    assert meta_last["round"] == "4" and meta_best["round"] == str(best)
    assert json.loads(meta_last["features"]) == ["x0", "x1", "x2", "x3"]
    assert set(last) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert last["0.weight"].shape == (8, 4) and last["0.weight"].dtype == np.float32


def test_fedavg_is_the_row_weighted_mean_of_the_sites_weights(plan: Path) -> None:
    """One round, then the same round trained at each site alone: the global weights are the
    row-weighted mean of the three single-site results."""
    sites = blobs([60, 45, 80])
    params = mlp_params(plan, rounds=1)
    together = simulate("train", params, sites, seed=5)
    glob, _ = from_safetensors(together.done.artifacts["model-last.safetensors"], "x")
    rows = {"site0": 48, "site1": 36, "site2": 64}  # after a fifth is held out
    acc = {k: np.zeros(v.shape) for k, v in glob.items()}
    for name in sites:  # each site alone, same name, same seed: the same local update
        alone = simulate("train", params, {name: sites[name]}, seed=5)
        w, _ = from_safetensors(alone.done.artifacts["model-last.safetensors"], name)
        for k in acc:
            acc[k] += rows[name] * w[k].astype(np.float64)
    for k in acc:
        np.testing.assert_allclose(glob[k], acc[k] / 148, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_strategies_run_deterministically(plan: Path, strategy: str) -> None:
    extra: dict[str, object] = {"strategy": strategy}
    if strategy == "fedprox":
        extra["mu"] = 0.1
    sites = blobs([50, 50, 50])
    a = simulate("train", mlp_params(plan, **extra), sites, seed=2)
    b = simulate("train", mlp_params(plan, **extra), sites, seed=2)
    base = simulate("train", mlp_params(plan), sites, seed=2)
    key = "model-last.safetensors"
    assert a.done.artifacts[key] == b.done.artifacts[key]
    assert a.done.artifacts[key] != base.done.artifacts[key]
    assert a.result["strategy"] == strategy


def test_fraction_samples_sites_seeded_and_every_site_validates(plan: Path) -> None:
    sites = blobs([40, 40, 40, 40, 40])
    sim = simulate("train", mlp_params(plan, fraction=0.4, rounds=4), sites, seed=9)
    history = sim.result["history"]
    for h in history[1:]:
        assert len(h["sampled"]) == 2 and set(h["sites"]) == set(h["sampled"])
    assert len({tuple(h["sampled"]) for h in history[1:]}) > 1  # drawn again each round
    for h in history:
        assert len(h["global_sites"]) == 5
    again = simulate("train", mlp_params(plan, fraction=0.4, rounds=4), sites, seed=9)
    assert [h["sampled"] for h in again.result["history"]] == [h["sampled"] for h in history]
    quorum = simulate("train", mlp_params(plan, fraction=0.2, min_sites=3), sites, seed=9)
    assert all(len(h["sampled"]) == 3 for h in quorum.result["history"][1:])


def test_bad_plans_and_parameters_are_named(tmp_path: Path, plan: Path) -> None:
    sites = blobs([30, 30])
    with pytest.raises(AppError, match="does not exist"):
        simulate("train", mlp_params(tmp_path / "nope.py"), sites, seed=1)
    bare = write_plan(tmp_path, "def model():\n    return None\n", "bare.py")
    with pytest.raises(AppError, match="defines no function loss"):
        simulate("train", mlp_params(bare), sites, seed=1)
    with pytest.raises(AppError, match="metric 'f1' is not among the plan's metrics"):
        simulate("train", mlp_params(plan, metric="f1"), sites, seed=1)
    with pytest.raises(AppError, match="fedprox.*needs mu"):
        simulate("train", mlp_params(plan, strategy="fedprox"), sites, seed=1)
    with pytest.raises(AppError, match="min_sites = 3 but the study has 2"):
        simulate("train", mlp_params(plan, min_sites=3), sites, seed=1)
    with pytest.raises(AppError, match="has hash"):
        simulate("train", mlp_params(plan, plan_sha256="sha256:" + "0" * 64), sites, seed=1)
