"""kmeans: merge of cluster sums, the seeded start, min_count withholding, stopping, refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge_learning import merge_cluster_sums
from fedflow.apps.base import SiteContext, Table
from fedflow.apps.kmeans import candidate_pool, greedy_initial_centers, nearest
from fedflow.apps.simulate import simulate
from fedflow.errors import AppError, DataError
from tests.apps.fidelity import dataset, split, wire_relay

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


def test_federated_start_equals_the_pooled_greedy_start() -> None:
    sim = simulate(
        "kmeans", {"columns": _IRIS, "k": 4, "seed": 9}, _sites(7, "unbalanced"), min_count=1
    )
    x = dataset("iris")[_IRIS].to_numpy()
    expected = greedy_initial_centers(x, 4, 9)
    np.testing.assert_allclose(sim.result["initial_centers"], expected, rtol=1e-12)
    assert len({tuple(c) for c in sim.result["initial_centers"]}) == 4


def test_replies_never_reveal_a_small_cluster() -> None:
    seen: list[dict[str, object]] = []

    def spy(payload: dict[str, object]) -> dict[str, object]:
        seen.append(payload)
        return wire_relay(payload)

    sim = simulate(
        "kmeans",
        {"columns": _IRIS, "k": 5, "seed": 3},
        _sites(7, "unbalanced"),
        min_count=5,
        relay=spy,
    )
    counts = [np.asarray(p["counts"]) for p in seen if "counts" in p]
    assert counts
    for c in counts:
        assert not np.any((c > 0) & (c < 5))
    assert sim.result["withheld"] > 0
    assert any("withheld" in note for note in sim.notes)
    assert sum(sim.result["cluster_sizes"]) < 150  # the withheld rows are not counted


def test_no_reply_carries_rows() -> None:
    seen: list[dict[str, object]] = []

    def spy(payload: dict[str, object]) -> dict[str, object]:
        seen.append(payload)
        return wire_relay(payload)

    simulate("kmeans", {"columns": _IRIS, "k": 3}, _sites(), relay=spy)
    replies = seen[1::2]
    for reply in replies:
        assert set(reply) <= {
            "n",
            "mean",
            "m2",
            "potentials",
            "inertia",
            "counts",
            "withheld",
            "sums",
        }
        assert np.size(reply.get("sums", ())) <= 3 * 4  # type: ignore[arg-type]


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
        app.local(Table({"a": np.arange(3.0)}), params, {"stage": "moments"}, SiteContext("x"))


def test_an_emptied_cluster_keeps_its_centre_and_is_noted() -> None:
    from fedflow.apps.base import Continue, CoordinatorContext

    app = get_app("kmeans")
    params = app.parse_params({"columns": ["a"], "k": 2, "tol": 0.0})
    ctx = CoordinatorContext(sites={})
    app.start(params, ctx)
    centers = np.array([[0.0], [10.0]])
    ctx.state.update(pool=centers, taken=[0, 1], centers=centers, initial=centers)
    ctx.state.update(iterations=0, shift_tol=0.0)
    ctx.round = 5
    reply = {"counts": np.array([5, 0]), "sums": np.array([[10.0], [0.0]]), "inertia": 3.0}
    step = app.aggregate({"x": {**reply, "withheld": 0}}, params, ctx)
    assert isinstance(step, Continue)
    assert np.asarray(step.payload["centers"]).tolist() == [[2.0], [10.0]]
    assert any("cluster 1 lost all its rows" in note for note in ctx.notes)


def test_distances_computed_block_by_block_equal_the_direct_ones() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(1000, 1000))  # 1e6 cells: 4 rows per block
    x = rng.normal(size=(10, 1000))
    d2 = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    labels, dist = nearest(x, centers)
    assert labels.tolist() == np.argmin(d2, axis=1).tolist()
    np.testing.assert_allclose(dist, d2.min(axis=1), rtol=1e-14)
