"""kmeans: merge of cluster sums, the seeded start, min_count withholding, stopping, refusals,
and the phases' typed payloads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge_learning import merge_cluster_sums
from fedflow.apps.base import CoordinatorContext, Empty, SiteContext, Table
from fedflow.apps.kmeans import (
    Centers,
    ClusterSums,
    candidate_pool,
    greedy_initial_centers,
    nearest,
)
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.apps.kmeans_reference import independent_initial_centers
from tests.apps.wire_spy import run_spied

_IRIS = ["sepal_length_(cm)", "sepal_width_(cm)", "petal_length_(cm)", "petal_width_(cm)"]


def _sites(n: int = 3, mode: str = "iid") -> dict[str, Table]:
    return {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(dataset("iris"), n, mode))}


def test_merged_cluster_sums_are_the_pooled_means() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2))
    labels = rng.integers(0, 3, size=90)
    parts = np.array_split(np.arange(90), 4)
    counts = [np.bincount(labels[p], minlength=4) for p in parts]
    sums = []
    for p in parts:
        s = np.zeros((4, 2))
        np.add.at(s, labels[p], x[p])
        sums.append(s)
    previous = np.full((4, 2), 7.0)
    centers, total, empty = merge_cluster_sums(counts, sums, previous)
    for j in range(3):
        np.testing.assert_allclose(centers[j], x[labels == j].mean(axis=0), rtol=1e-13)
    assert empty == [3] and centers[3].tolist() == [7.0, 7.0]  # no row: the centre stays
    assert total.tolist()[:3] == np.bincount(labels).tolist()


def test_nearest_breaks_ties_towards_the_lowest_index() -> None:
    labels, dist = nearest(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0], [1.0]]))
    assert labels.tolist() == [0, 0] and dist.tolist() == [1.0, 1.0]


def test_the_start_depends_on_the_seed_and_aggregates_only() -> None:
    a = candidate_pool(np.zeros(2), np.ones(2), 3, seed=1)
    assert a.shape == (30, 2) and np.all(np.abs(a) <= 1.0)
    assert np.array_equal(a, candidate_pool(np.zeros(2), np.ones(2), 3, seed=1))
    assert not np.array_equal(a, candidate_pool(np.zeros(2), np.ones(2), 3, seed=2))


def test_federated_start_equals_the_documented_start() -> None:
    sim = simulate(
        "kmeans", {"columns": _IRIS, "k": 4, "seed": 9}, _sites(7, "unbalanced"), min_count=1
    )
    assert sim.rounds >= 1 + 4  # moments, then one seeding round per centre
    x = dataset("iris")[_IRIS].to_numpy()
    expected = independent_initial_centers(x, 4, 9)  # test code, shares nothing with the app
    np.testing.assert_allclose(sim.result["initial_centers"], expected, rtol=1e-12)
    assert len({tuple(c) for c in sim.result["initial_centers"]}) == 4
    # the app's own twin (production --compare) starts from the same centres
    np.testing.assert_allclose(greedy_initial_centers(x, 4, 9), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_independent_start_matches_the_documented_pool(seed: int) -> None:
    """The reference's start is the pool drawn from default_rng(seed), never another draw."""
    x = dataset("wine").drop(columns="target").to_numpy(dtype=np.float64)
    start = independent_initial_centers(x, 3, seed)
    pool = candidate_pool(x.mean(axis=0), x.std(axis=0), 3, seed)
    assert all(any(np.allclose(c, p, rtol=1e-14) for p in pool) for c in start)


def test_replies_never_reveal_a_small_cluster() -> None:
    spied = run_spied(
        "kmeans", {"columns": _IRIS, "k": 5, "seed": 3}, _sites(7, "unbalanced"), min_count=5
    )
    counts = [
        np.asarray(r["counts"]) for phase in ("lloyd", "assign") for r in spied.replies(phase)
    ]
    assert counts
    for c in counts:
        assert not np.any((c > 0) & (c < 5))
    assert spied.result["withheld"] > 0
    assert any("withheld" in note for note in spied.outcome.notes)
    assert sum(spied.result["cluster_sizes"]) < 150  # the withheld rows are not counted


def test_no_reply_carries_rows() -> None:
    spied = run_spied("kmeans", {"columns": _IRIS, "k": 3}, _sites())
    allowed = {
        "moments": {"n", "sums", "squares"},
        "seed": {"potentials"},
        "lloyd": {"counts", "sums", "inertia", "withheld"},
        "assign": {"counts", "inertia", "withheld"},
    }
    phases = [e.phase for e in spied.exchanges]
    assert phases[0] == "moments" and phases.count("seed") == 3 * 3  # 3 sites × k rounds
    assert "lloyd" in phases
    for exchange in spied.exchanges:
        assert set(exchange.reply) == allowed[exchange.phase], exchange.phase
        assert np.size(exchange.reply.get("sums", ())) <= 3 * 4
    assert all(np.size(r["potentials"]) == 10 * 3 for r in spied.replies("seed"))  # per candidate


def test_same_seed_same_result_and_tol_zero_runs_to_a_fixed_point() -> None:
    params = {"columns": _IRIS, "k": 3, "tol": 0.0, "seed": 4}
    a = simulate("kmeans", params, _sites(), min_count=1).result
    b = simulate("kmeans", params, _sites(7, "unbalanced"), min_count=1).result
    np.testing.assert_allclose(a["centers"], b["centers"], rtol=1e-12)
    assert a["converged"] and a["iterations"] == b["iterations"]
    x = dataset("iris")[_IRIS].to_numpy()
    labels, dist = nearest(x, np.asarray(a["centers"]))
    for j in range(3):  # a fixed point: every centre is the mean of its rows
        np.testing.assert_allclose(a["centers"][j], x[labels == j].mean(axis=0), rtol=1e-12)
    assert a["inertia"] == pytest.approx(float(dist.sum()), rel=1e-12)


def test_max_iter_stops_and_says_so() -> None:
    sim = simulate("kmeans", {"columns": _IRIS, "k": 6, "max_iter": 1, "tol": 0.0}, _sites())
    assert sim.result["iterations"] == 1 and sim.result["converged"] is False
    assert any("did not converge" in note for note in sim.notes)


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_each_lloyd_update_counts_and_the_last_one_is_kept(max_iter: int) -> None:
    """Lloyd from the reported start, written here: max_iter updates, then one assignment."""
    params = {"columns": _IRIS, "k": 4, "max_iter": max_iter, "tol": 0.0, "seed": 5}
    result = simulate("kmeans", params, _sites(7, "unbalanced"), min_count=1).result
    x = dataset("iris")[_IRIS].to_numpy()
    centers = np.asarray(result["initial_centers"])
    for _ in range(max_iter):
        d2 = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        labels = d2.argmin(axis=1)
        centers = np.array([x[labels == j].mean(axis=0) for j in range(4)])
    d2 = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    assert result["iterations"] == max_iter and result["converged"] is False
    np.testing.assert_allclose(result["centers"], centers, rtol=1e-12)
    assert result["cluster_sizes"] == np.bincount(d2.argmin(axis=1), minlength=4).tolist()
    assert result["inertia"] == pytest.approx(float(d2.min(axis=1).sum()), rel=1e-12)


def test_more_clusters_than_rows_is_refused() -> None:
    frame = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6.0) ** 2})
    sites = {"x": Table.from_pandas(frame[:3]), "y": Table.from_pandas(frame[3:])}
    with pytest.raises(AppError, match="k = 7 exceeds the 6 rows"):
        simulate("kmeans", {"k": 7}, sites, min_count=1)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"k": 0}, "k must be at least 1"),
        ({"k": 2, "tol": -1.0}, "tol"),
        ({"k": 2, "max_iter": 0}, "max_iter"),
        ({}, "k"),
        ({"k": 2, "columns": []}, "empty"),
        ({"k": 2, "seeds": 1}, "did you mean 'seed'"),
    ],
)
def test_bad_params_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match=message):
        get_app("kmeans").parse_params(raw)


def test_a_site_below_min_count_refuses() -> None:
    app = get_app("kmeans")
    params = app.parse_params({"columns": ["a"], "k": 2})
    with pytest.raises(DataError, match="min_count"):
        app.local(Table({"a": np.arange(3.0)}), params, "moments", Empty(), SiteContext("x"))


def test_an_emptied_cluster_keeps_its_centre_and_is_noted() -> None:
    from fedflow.apps.base import Continue

    app = get_app("kmeans")
    params = app.parse_params({"columns": ["a"], "k": 2, "tol": 0.0, "seed": 1})
    ctx = CoordinatorContext(sites={})
    step = app.aggregate(
        "moments",
        {"x": app.local_moments(Table({"a": np.arange(10.0)}), params, Empty(), SiteContext("x"))},
        params,
        ctx,
    )
    while isinstance(step, Continue) and step.phase == "seed":
        pool, chosen = step.request.candidates, step.request.chosen
        fake = np.arange(len(pool), dtype=np.float64) + 10.0 * len(chosen)
        step = app.aggregate("seed", {"x": _potentials(fake)}, params, ctx)
    assert isinstance(step, Continue) and step.phase == "lloyd"
    centers = np.asarray(step.request.centers)
    ctx.round = 5
    reply = ClusterSums(
        counts=np.array([5, 0]), sums=np.array([[10.0], [0.0]]), inertia=3.0, withheld=0
    )
    step = app.aggregate("lloyd", {"x": reply}, params, ctx)
    assert isinstance(step, Continue) and step.phase == "lloyd"
    assert isinstance(step.request, Centers)
    assert np.asarray(step.request.centers).tolist() == [[2.0], centers[1].tolist()]
    assert any("cluster 1 lost all its rows in round 5" in note for note in ctx.notes)


def _potentials(values: np.ndarray) -> object:
    from fedflow.apps.kmeans import Potentials

    return Potentials(potentials=values)


def test_a_phase_sends_and_receives_its_declared_types() -> None:
    app = get_app("kmeans")
    assert list(app.phases) == ["moments", "seed", "lloyd", "assign"]
    params = app.parse_params({"columns": ["a"], "k": 1})
    table = Table({"a": np.arange(8.0)})
    reply = app.local(table, params, "assign", Centers(centers=np.array([[0.0]])), SiteContext("x"))
    assert set(type(reply).__struct_fields__) == {"counts", "inertia", "withheld"}
    with pytest.raises(AppError, match="has no phase 'stage'"):
        app.local(table, params, "stage", Empty(), SiteContext("x"))


def test_distances_computed_block_by_block_equal_the_direct_ones() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(1000, 1000))  # 1e6 cells: 4 rows per block
    x = rng.normal(size=(10, 1000))
    d2 = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    labels, dist = nearest(x, centers)
    assert labels.tolist() == np.argmin(d2, axis=1).tolist()
    np.testing.assert_allclose(dist, d2.min(axis=1), rtol=1e-14)
