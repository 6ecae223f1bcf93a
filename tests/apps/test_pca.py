"""pca: the factored Chan merge, sign normalisation, projections kept at the sites, refusals."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge_learning import merge_centered_factors, r_factor
from fedflow.apps.base import SiteContext, Table
from fedflow.apps.pca import normalise_signs
from fedflow.apps.simulate import simulate
from fedflow.errors import AppError, DataError
from tests.apps.fidelity import dataset, split, wire_relay

_IRIS = ["sepal_length_(cm)", "sepal_width_(cm)", "petal_length_(cm)", "petal_width_(cm)"]


def _iris_sites(
    n: int = 3, mode: str = "unbalanced"
) -> tuple[list[pd.DataFrame], dict[str, Table]]:
    parts = split(dataset("iris"), n, mode)
    return parts, {f"s{i}": Table.from_pandas(p) for i, p in enumerate(parts)}


def test_merged_factor_is_the_pooled_centred_scatter() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(loc=5.0, scale=s, size=(n, 3)) for n, s in ((2, 1.0), (40, 3.0), (9, 0.1))]
    summaries = []
    for p in parts:
        mean = p.mean(axis=0)
        summaries.append((len(p), mean, r_factor(p - mean)))
    n, mean, r = merge_centered_factors(summaries)
    pooled = np.vstack(parts)
    centred = pooled - pooled.mean(axis=0)
    assert n == 51
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(r.T @ r, centred.T @ centred, rtol=1e-12)


def test_merge_skips_empty_parts_and_refuses_nothing() -> None:
    one = (4, np.ones(2), np.eye(2))
    n, mean, _ = merge_centered_factors([one, (0, np.zeros(2), np.zeros((0, 2)))])
    assert n == 4 and mean.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        merge_centered_factors([])


def test_signs_put_the_largest_entry_positive() -> None:
    out = normalise_signs(np.array([[0.1, -0.9, 0.3], [0.5, 0.2, -0.1]]))
    assert out.tolist() == [[-0.1, 0.9, -0.3], [0.5, 0.2, -0.1]]


def test_all_components_explain_everything() -> None:
    _, sites = _iris_sites()
    result = simulate("pca", {"columns": _IRIS, "standardize": True}, sites).result
    assert sum(result["explained_variance_ratio"]) == pytest.approx(1.0, rel=1e-12)
    # standardized with the population deviation: variances sum to p·n/(n − 1)
    assert sum(result["explained_variance"]) == pytest.approx(4 * 150 / 149, rel=1e-12)
    assert len(result["components"]) == 4 and result["columns"] == _IRIS


def test_projections_stay_at_each_site_and_match_sklearn() -> None:
    from sklearn.decomposition import PCA

    parts, sites = _iris_sites()
    replies: list[dict[str, object]] = []

    def spy(payload: dict[str, object]) -> dict[str, object]:
        replies.append(payload)
        return wire_relay(payload)

    sim = simulate(
        "pca", {"columns": _IRIS, "n_components": 2, "projections": True}, sites, relay=spy
    )
    assert sim.rounds == 2
    assert "projections" not in sim.result
    # the second round's replies (every other relayed payload is a reply) carry nothing
    assert all(not reply for reply in replies[-2 * len(sites) + 1 :: 2])
    pooled = pd.concat(parts, ignore_index=True)[_IRIS].to_numpy()
    reference = PCA(n_components=2, svd_solver="full").fit(pooled)
    flips = np.sign(np.sum(normalise_signs(reference.components_) * reference.components_, axis=1))
    for i, part in enumerate(parts):
        csv = sim.site_outputs[f"s{i}"]["projections.csv"].decode()
        scores = pd.read_csv(io.StringIO(csv))
        assert list(scores.columns) == ["PC1", "PC2"]
        expected = reference.transform(part[_IRIS].to_numpy()) * flips
        np.testing.assert_allclose(scores.to_numpy(), expected, rtol=1e-9, atol=1e-12)


def test_standardizing_a_constant_column_is_refused() -> None:
    frame = dataset("iris").assign(const=1.0)
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, 3, "iid"))}
    with pytest.raises(AppError, match="constant column.*const"):
        simulate("pca", {"columns": [*_IRIS, "const"], "standardize": True}, sites)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"n_components": 0}, "at least 1"),
        ({"columns": ["a", "b"], "n_components": 3}, "exceeds the 2 columns"),
        ({"columns": []}, "empty"),
        ({"columns": ["a", "a"]}, "listed twice"),
        ({"standardise": True}, "did you mean 'standardize'"),
    ],
)
def test_bad_params_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match=message):
        get_app("pca").parse_params(raw)


def test_too_many_components_for_the_numeric_columns() -> None:
    _, sites = _iris_sites()
    with pytest.raises(AppError, match="exceeds the 5 numeric columns"):
        simulate("pca", {"n_components": 6}, sites)


def test_a_site_below_min_count_refuses() -> None:
    app = get_app("pca")
    params = app.parse_params({"columns": ["a", "b"]})
    table = Table({"a": np.arange(3.0), "b": np.ones(3)})
    with pytest.raises(DataError, match="min_count"):
        app.local(table, params, {}, SiteContext(site="x", min_count=5))


def test_sites_with_fewer_rows_than_columns_still_give_the_pooled_components() -> None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    frame = dataset("breast_cancer").drop(columns="target")
    parts = split(frame, 7, "unbalanced")
    assert min(len(p) for p in parts) < frame.shape[1]  # a site is wider than tall
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(parts)}
    result = simulate("pca", {"standardize": True, "n_components": 6}, sites).result
    pooled = StandardScaler().fit_transform(pd.concat(parts, ignore_index=True).to_numpy())
    reference = PCA(n_components=6, svd_solver="full").fit(pooled)
    np.testing.assert_allclose(
        result["explained_variance"], reference.explained_variance_, rtol=1e-10
    )
    np.testing.assert_allclose(
        result["components"], normalise_signs(reference.components_), rtol=1e-8, atol=1e-12
    )
