"""kmeans against a coordinator that differences a site's releases: two rounds' sums of one
cluster, one cluster against another, a cluster against the site's total. No difference of two
values a site released may cover 1 … min_count−1 rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedflow.apps import get_app
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.kmeans import Centers, ClusterSums
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split

MIN = 5
APP = get_app("kmeans")


def _site(n: int = 40, seed: int = 0) -> tuple[np.ndarray, Table]:
    """A site with ``n`` rows on a line (x = 0, 1, 2, …) plus noise in a second column."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.arange(n, dtype=np.float64), rng.normal(size=n)])
    return x, Table({"a": x[:, 0], "b": x[:, 1]})


class Hostile:
    """A coordinator that picks the centres itself, round after round, at one site."""

    def __init__(self, table: Table, k: int, min_count: int = MIN) -> None:
        self.params = APP.parse_params({"columns": ["a", "b"], "k": k})
        self.table = table
        self.ctx = SiteContext("h", min_count=min_count)
        self.moments = APP.local_moments(table, self.params, Empty(), self.ctx)

    def lloyd(self, centers: list[list[float]]) -> ClusterSums:
        self.ctx.round += 1
        request = Centers(centers=np.asarray(centers, dtype=np.float64))
        return APP.local_lloyd(self.table, self.params, request, self.ctx)


def test_two_rounds_of_one_cluster_no_longer_isolate_a_row() -> None:
    """The planted attack: cluster 0 holds rows 0…9 in round 1 and 0…10 in round 2; the
    difference of its sums would be row 10. The site keeps row 10 where it released it."""
    x, table = _site()
    attacker = Hostile(table, k=2)
    # two far centres whose midpoint on the line splits the rows: cluster 0 takes those below it
    first = attacker.lloyd([[9.5 - 1000.0, 0.0], [9.5 + 1000.0, 0.0]])  # rows 0…9
    second = attacker.lloyd([[10.5 - 1000.0, 0.0], [10.5 + 1000.0, 0.0]])  # rows 0…10
    assert int(first.counts[0]) == 10 and np.allclose(first.sums[0], x[:10].sum(axis=0))
    # the attack: difference the two releases of cluster 0 to read row 10
    difference = np.asarray(second.sums[0]) - np.asarray(first.sums[0])
    assert not np.allclose(difference, x[10]), "row 10 isolated by differencing two rounds"
    assert np.array_equal(second.sums, first.sums) and np.array_equal(second.counts, first.counts)
    assert second.withheld == 2  # clusters 0 and 1 both stay as released in round 1
    # a move of min_count rows is released
    third = attacker.lloyd([[14.5 - 1000.0, 0.0], [14.5 + 1000.0, 0.0]])  # rows 0…14
    assert int(third.counts[0]) == 15 and np.allclose(third.sums[0], x[:15].sum(axis=0))
    assert third.withheld == 0


def test_relabelling_the_cluster_does_not_help() -> None:
    """Round 2 puts rows 0…10 into cluster 1 instead of cluster 0: one row from a released
    set again, so no release covers rows 0…10."""
    x, table = _site()
    attacker = Hostile(table, k=3)
    first = attacker.lloyd([[9.5 - 1000.0, 0.0], [9.5 + 1000.0, 0.0], [1e9, 1e9]])
    relabelled = attacker.lloyd([[1e9, 1e9], [10.5 - 1000.0, 0.0], [10.5 + 1000.0, 0.0]])
    for j in range(3):
        assert int(relabelled.counts[j]) != 11
        for i in range(3):
            gap = np.asarray(relabelled.sums[j]) - np.asarray(first.sums[i])
            assert not np.allclose(np.abs(gap), np.abs(x[10])), (j, i)


def test_the_sites_total_minus_the_released_clusters_isolates_nothing() -> None:
    """Cluster 1 holds 2 rows (too few to release); releasing cluster 0 would give them away
    as the site's total (from ``moments``) minus cluster 0. Neither is released."""
    x, table = _site()
    attacker = Hostile(table, k=2)
    reply = attacker.lloyd([[37.5 - 1000.0, 0.0], [37.5 + 1000.0, 0.0]])  # rows 38, 39 → 1
    assert reply.withheld == 2
    assert np.all(np.asarray(reply.counts) == 0) and np.all(np.asarray(reply.sums) == 0.0)
    total = np.array([float(v) for v in attacker.moments.sums])
    assert not np.allclose(total - np.asarray(reply.sums).sum(axis=0), x[38:].sum(axis=0))


def _released_sets(rows: np.ndarray, rounds: list[tuple[np.ndarray, ClusterSums]]) -> list:
    """Every row set the site released a sum over — all rows (``moments``), each released
    cluster, and the rest (its total minus the released clusters) — from the membership the
    site recorded each round; checks each reply is that membership's counts and sums."""
    n = len(rows)
    sets = [frozenset(range(n))]
    for published, reply in rounds:
        k = len(np.asarray(reply.counts))
        for j in range(k + 1):
            members = frozenset(np.flatnonzero(published == j).tolist())
            if j < k:
                assert int(reply.counts[j]) == len(members)
                expected = rows[list(members)].sum(axis=0) if members else 0.0
                np.testing.assert_allclose(reply.sums[j], expected, atol=1e-9)
            if members:
                sets.append(members)
    return sets


@pytest.mark.parametrize("seed", range(12))
def test_random_hostile_centres_never_yield_a_small_difference(seed: int) -> None:
    """Centres jittered round after round around the site's rows (a coordinator probing for
    small moves): no two released row sets differ by 1 … min_count−1 rows."""
    rng = np.random.default_rng(seed)
    x, table = _site(n=30, seed=seed)
    k = int(rng.integers(2, 5))
    attacker = Hostile(table, k=k)
    base = x[rng.choice(len(x), size=k, replace=False)]
    rounds = []
    for _ in range(25):
        centers = base + rng.normal(scale=1.5, size=base.shape)
        reply = attacker.lloyd(centers.tolist())
        rounds.append((attacker.ctx.state["published"].copy(), reply))
    sets = _released_sets(x, rounds)
    for a, b in itertools.combinations(sets, 2):
        assert len(a) >= MIN and len(b) >= MIN
        assert len(a ^ b) == 0 or len(a ^ b) >= MIN, (sorted(a ^ b), seed)
    assert len(set(sets)) > 2  # the site did release clusters along the way


def test_with_min_count_1_nothing_is_withheld() -> None:
    _, table = _site()
    attacker = Hostile(table, k=2, min_count=1)
    attacker.lloyd([[9.5 - 1000.0, 0.0], [9.5 + 1000.0, 0.0]])
    reply = attacker.lloyd([[10.5 - 1000.0, 0.0], [10.5 + 1000.0, 0.0]])
    assert reply.withheld == 0 and int(reply.counts[0]) == 11


def test_an_honest_run_is_exact_at_min_count_1_and_says_when_it_withholds() -> None:
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(dataset("iris"), 3, "iid"))}
    params = {"columns": ["sepal_length_(cm)", "petal_length_(cm)"], "k": 3, "tol": 0.0}
    exact = simulate("kmeans", params, sites, min_count=1)
    assert exact.result["withheld"] == 0 and sum(exact.result["cluster_sizes"]) == 150
    guarded = simulate("kmeans", params, sites, min_count=5)
    if guarded.result["withheld"]:
        assert any("withheld" in n and "from what it released before" in n for n in guarded.notes)
    assert not np.any([(0 < c < 5) for c in guarded.result["cluster_sizes"]])
