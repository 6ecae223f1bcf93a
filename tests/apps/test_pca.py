"""pca: the factored Chan merge, sign normalisation, projections kept at the sites, refusals,
and the phases' typed payloads."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge_learning import merge_centered_factors, r_factor
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.pca import normalise_signs
from fedflow.errors import AppError, DataError
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.apps.wire_spy import run_spied

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


@pytest.mark.parametrize("standardize", [False, True])
def test_projections_stay_at_each_site_and_match_sklearn(standardize: bool) -> None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    parts, sites = _iris_sites()
    params = {"columns": _IRIS, "n_components": 2, "projections": True}
    spied = run_spied("pca", {**params, "standardize": standardize}, sites)
    sim = simulate("pca", {**params, "standardize": standardize}, sites)
    assert sim.rounds == 2 and [e.phase for e in spied.exchanges[-3:]] == ["project"] * 3
    assert "projections" not in sim.result
    assert spied.replies("project") == [{}, {}, {}]  # the scores stay at the sites
    assert set(spied.replies("factor")[0]) == {"n", "mean", "r"}
    pooled = pd.concat(parts, ignore_index=True)[_IRIS].to_numpy()
    scaler = StandardScaler(with_std=standardize).fit(pooled)
    reference = PCA(n_components=2, svd_solver="full").fit(scaler.transform(pooled))
    flips = np.sign(np.sum(normalise_signs(reference.components_) * reference.components_, axis=1))
    for outputs in (sim.site_outputs, spied.site_outputs):
        assert sorted(outputs) == ["s0", "s1", "s2"]
        for i, part in enumerate(parts):
            csv = outputs[f"s{i}"]["projections.csv"].decode()
            scores = pd.read_csv(io.StringIO(csv))
            assert list(scores.columns) == ["PC1", "PC2"] and len(scores) == len(part)
            expected = reference.transform(scaler.transform(part[_IRIS].to_numpy())) * flips
            np.testing.assert_allclose(scores.to_numpy(), expected, rtol=1e-9, atol=1e-12)


def test_without_projections_one_round_and_no_site_output() -> None:
    _, sites = _iris_sites()
    sim = simulate("pca", {"columns": _IRIS}, sites)
    assert sim.rounds == 1 and sim.site_outputs == {}


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
        app.local(table, params, "factor", Empty(), SiteContext(site="x", min_count=5))


def test_phases_and_their_payload_types() -> None:
    from fedflow.apps.pca import CentredFactor, Gram, Projection

    app = get_app("pca")
    assert {name: (p.request, p.reply, p.summed) for name, p in app.phases.items()} == {
        "factor": (Empty, CentredFactor, False),
        "gram": (Empty, Gram, True),
        "project": (Projection, Empty, True),
    }
    params = app.parse_params({"columns": ["a", "b"]})
    table = Table({"a": np.arange(6.0), "b": np.arange(6.0) ** 2})
    reply = app.local(table, params, "factor", Empty(), SiteContext(site="x", min_count=1))
    assert isinstance(reply, CentredFactor) and reply.n == 6 and reply.r.shape == (2, 2)


def test_standardized_scale_is_the_population_deviation() -> None:
    parts, sites = _iris_sites()
    result = simulate("pca", {"columns": _IRIS, "standardize": True}, sites).result
    pooled = pd.concat(parts, ignore_index=True)[_IRIS].to_numpy()
    np.testing.assert_allclose(result["scale"], pooled.std(axis=0, ddof=0), rtol=1e-12)
    np.testing.assert_allclose(result["mean"], pooled.mean(axis=0), rtol=1e-12)


def test_default_columns_are_every_numeric_column() -> None:
    frame = dataset("iris").assign(label="x")  # a text column is left out
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, 3, "iid"))}
    result = simulate("pca", {}, sites).result
    assert result["columns"] == [*_IRIS, "target"]
    assert len(result["mean"]) == 5 and len(result["components"]) == 5


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
