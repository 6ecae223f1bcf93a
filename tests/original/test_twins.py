"""The native twins of FeatureCloud's ``random-forest`` and ``federated-svd`` apps, checked against
computations that share none of their code: the random-forest app's own algorithm (scikit-learn
forests fitted per client, their ``estimators_`` concatenated, ``predict_proba`` / ``predict``,
files written with pandas ``to_csv``, as ``app/logic.py`` does), and numpy's eigendecomposition of
the pooled scaled data written with pandas (the federated SVD app's definitions), on sklearn's
shipped datasets."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from fedflow.apps import Table
from fedflow.apps._fc_csv import frame_csv
from fedflow.runtime.simulate import simulate

FOREST = "fedflow.apps.fc_forest:FeatureCloudForest"
SVD = "fedflow.apps.fc_svd:FeatureCloudSVD"


def _to_csv(frame: pd.DataFrame, **kw: Any) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, **kw)
    return buffer.getvalue().encode()


# -- the CSV writer ------------------------------------------------------------------------------
def test_the_files_are_written_as_pandas_writes_them() -> None:
    values = np.array([0.1 + 0.2, 1e-20, 1e16, -0.0, np.nan, np.inf, 1.0, 2.5e-7, 3e22, 7.0])
    assert frame_csv(["a"], [values], sep=",") == _to_csv(pd.DataFrame({"a": values}), index=False)
    ints = np.arange(10)
    text = np.array(["x", "y,z", 'q"t', "", "1", "a\tb", "-", "é", "n", " s"], dtype=object)
    frame = pd.DataFrame({"pred": ints, "label": text, "v": values})
    for sep in (",", "\t", ";"):
        got = frame_csv(["pred", "label", "v"], [ints, text, values], sep=sep)
        assert got == _to_csv(frame, index=False, sep=sep)
    matrix = np.random.default_rng(0).normal(size=(4, 3))
    index = ["f1", "f 2", "f,3", "f4"]
    assert frame_csv(range(3), matrix, sep="\t", index=index) == _to_csv(
        pd.DataFrame(matrix, index=np.array(index, dtype=object)), sep="\t"
    )
    assert frame_csv(range(3), matrix, sep="\t", header=False) == _to_csv(
        pd.DataFrame(matrix), sep="\t", header=False, index=False
    )


# -- random-forest -------------------------------------------------------------------------------
def _fc_random_forest(
    trains: list[pd.DataFrame],
    tests: list[pd.DataFrame],
    label: str,
    estimators: int,
    random_state: int,
    mode: str = "classification",
    min_samples_leaf: int = 1,
    sep: str = ",",
) -> list[dict[str, bytes]]:
    """FeatureCloud's random-forest app (``app/logic.py``), clients in order: each fits
    ``int(estimators · rows / all rows)`` trees with the same random_state, the coordinator
    concatenates ``estimators_``, every client predicts its test rows and writes its files."""
    total = sum(len(t) for t in trains)
    model = RandomForestClassifier if mode == "classification" else RandomForestRegressor
    forests = []
    for train in trains:
        trees = int(estimators * len(train) / total)
        forest = model(
            n_estimators=trees, random_state=random_state, min_samples_leaf=min_samples_leaf
        )
        forests.append(forest.fit(train.drop(label, axis=1), train[label]))
    merged = forests[0]
    for other in forests[1:]:
        merged.estimators_ += other.estimators_
        merged.n_estimators += other.n_estimators
    files = []
    for test in tests:
        x = test.drop(label, axis=1)
        out = {
            "pred.csv": _to_csv(pd.DataFrame({"pred": merged.predict(x)}), index=False, sep=sep),
            "test.csv": _to_csv(pd.DataFrame({"y_true": test[label]}), index=False, sep=sep),
        }
        if mode == "classification":
            proba = merged.predict_proba(x)
            out["proba.csv"] = _to_csv(
                pd.DataFrame({"prob_0": proba[:, 0], "prob_1": proba[:, 1]}), index=False, sep=sep
            )
        files.append(out)
    return files


def _frame(loader: Any, label: str) -> pd.DataFrame:
    data = loader(as_frame=True).frame
    data.columns = [f"x{i}" for i in range(data.shape[1] - 1)] + [label]
    return data


def _split(frame: pd.DataFrame, sizes: list[int], seed: int) -> list[pd.DataFrame]:
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    ends = np.cumsum(sizes)
    return [
        shuffled.iloc[e - n : e].reset_index(drop=True) for n, e in zip(sizes, ends, strict=True)
    ]


def _through_csv(frame: pd.DataFrame, sep: str = ",") -> pd.DataFrame:
    """The frame as the app reads its file: written and read back with pandas."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False, sep=sep)), sep=sep)


@pytest.mark.parametrize(
    ("loader", "sizes", "estimators", "seed"),
    [
        (load_breast_cancer, [200, 150, 219], 100, 42),  # binary, the workflow's shape
        (load_iris, [60, 50, 40], 30, 7),  # three classes: the app writes prob_0, prob_1 only
        (load_wine, [90, 88], 25, 0),
    ],
)
def test_forest_twin_writes_the_apps_files_byte_for_byte(
    loader: Any, sizes: list[int], estimators: int, seed: int
) -> None:
    label = "health_status"
    parts = [_through_csv(p) for p in _split(_frame(loader, label), sizes, seed)]
    expected = _fc_random_forest(parts, parts, label, estimators, seed)
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    params = {"label": label, "estimators": estimators, "random_state": seed}
    sim = simulate(FOREST, params, sites, min_count=1)
    for i, files in enumerate(expected):
        got = sim.site_outputs[f"site-{i + 1}"]
        for name, content in files.items():
            assert got[name] == content, (i, name)
    shares = [int(estimators * len(p) / sum(sizes)) for p in parts]
    assert sim.result["n_trees"] == sum(shares)
    assert list(sim.result["trees_per_site"].values()) == shares
    pred = np.concatenate([pd.read_csv(io.BytesIO(f["pred.csv"]))["pred"] for f in expected])
    truth = np.concatenate([p[label] for p in parts])
    assert sim.result["test_accuracy"] == pytest.approx(np.mean(pred == truth), abs=1e-15)


def test_forest_twin_with_a_test_file_and_a_tab_separator() -> None:
    label = "y"
    frame = _frame(load_breast_cancer, label)
    parts = _split(frame, [180, 190, 199], 3)
    trains = [_through_csv(p.iloc[:-40], "\t") for p in parts]
    tests = [_through_csv(p.iloc[-40:], "\t") for p in parts]
    expected = _fc_random_forest(trains, tests, label, 60, 5, sep="\t")
    sites = {
        f"s{i}": Table.from_pandas(pd.concat([a, b], ignore_index=True))
        for i, (a, b) in enumerate(zip(trains, tests, strict=True))
    }
    params = {
        "label": label,
        "estimators": 60,
        "random_state": 5,
        "sep": "\t",
        "test_rows": {f"s{i}": 40 for i in range(3)},
    }
    sim = simulate(FOREST, params, sites, min_count=1)
    for i, files in enumerate(expected):
        for name, content in files.items():
            assert sim.site_outputs[f"s{i}"][name] == content, (i, name)
    assert sim.result["n_test"] == 120


def test_forest_twin_regression_and_the_min_count_leaf_floor() -> None:
    label = "target"
    parts = [_through_csv(p) for p in _split(_frame(load_diabetes, label), [150, 140, 152], 1)]
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(parts)}
    params = {"label": label, "estimators": 40, "random_state": 3, "mode": "regression"}
    # min_count = 5: every leaf describes at least five rows of a site; the app's code with
    # min_samples_leaf = 5 writes the same files
    sim = simulate(FOREST, params, sites, min_count=5)
    floor = _fc_random_forest(parts, parts, label, 40, 3, "regression", min_samples_leaf=5)
    app = _fc_random_forest(parts, parts, label, 40, 3, "regression")
    for i in range(3):
        assert sim.site_outputs[f"s{i}"]["pred.csv"] == floor[i]["pred.csv"]
        assert sim.site_outputs[f"s{i}"]["pred.csv"] != app[i]["pred.csv"]
        assert "proba.csv" not in sim.site_outputs[f"s{i}"]
    pred = np.concatenate([pd.read_csv(io.BytesIO(f["pred.csv"]))["pred"] for f in floor])
    y = np.concatenate([p[label] for p in parts])
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert sim.result["test_r2"] == pytest.approx(r2, rel=1e-12)
    assert sim.result["min_samples_leaf"] == 5


def test_forest_twin_refuses_a_site_whose_share_rounds_to_no_tree() -> None:
    label = "y"
    parts = _split(_frame(load_breast_cancer, label), [500, 69], 0)
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(parts)}
    with pytest.raises(Exception, match=r"site 's1' gets int\(5 · 69 / 569\) = 0 trees"):
        simulate(FOREST, {"label": label, "estimators": 5}, sites, min_count=1)


# -- federated-svd -------------------------------------------------------------------------------
def _svd_files(parts: list[pd.DataFrame], config: dict[str, Any]) -> dict[str, Any]:
    """The federated SVD app's definitions on the pooled samples, with numpy and pandas only:
    log2(x + 1); features missing in more than max_nan_fraction of all samples dropped; mean
    and ddof = 1 deviation of the present values; centre, scale, missing → 0; top-k
    eigenvectors u of Z·Zᵀ; s = ‖Zᵀu‖; each site's G = Zᵢᵀu / s and projections Zᵢ·Gᵢ."""
    pooled = pd.concat(parts, axis=1)
    x = pooled.to_numpy(dtype=np.float64)
    if config["log_transform"]:
        with np.errstate(invalid="ignore"):
            x = np.log2(x + 1)
    frac = (np.isnan(x) | np.isinf(x)).sum(axis=1) / x.shape[1]
    keep = frac <= config["max_nan_fraction"]
    names = pooled.index[keep]
    x = x[keep]
    means = np.nanmean(x, axis=1, keepdims=True)
    variances = np.nanvar(x, axis=1, ddof=1)
    z = (x - means) / np.sqrt(variances)[:, None]
    z = np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    k = min(config["pcs"], parts[0].shape[1], z.shape[0] - 1)
    w, v = np.linalg.eigh(z @ z.T)
    u = v[:, np.argsort(w)[::-1][:k]]
    lead = np.abs(u).argmax(axis=0)
    u = u * np.sign(u[lead, np.arange(k)])
    s = np.linalg.norm(z.T @ u, axis=0)
    bounds = np.cumsum([0] + [p.shape[1] for p in parts])
    sites = []
    for i, part in enumerate(parts):
        zi = z[:, bounds[i] : bounds[i + 1]]
        g = zi.T @ u / s
        sites.append(
            {
                "left": pd.DataFrame(u, index=names),
                "right": pd.DataFrame(g, index=part.columns),
                "projections": pd.DataFrame(zi @ g, index=names),
                "scaled": zi,
            }
        )
    return {"s": s, "varex": s / variances.sum(), "means": means[:, 0], "sites": sites}


def _svd_sites(data: np.ndarray, n_sites: int, seed: int) -> list[pd.DataFrame]:
    """Samples × features data as the workflow lays it out for federated-svd: one file per
    site, a row per feature named in the first column ``msp_id``, a column per sample."""
    order = np.random.default_rng(seed).permutation(len(data))
    features = pd.Index([f"msp_{j:03d}" for j in range(data.shape[1])], name="msp_id")
    return [
        pd.DataFrame(data[idx].T, index=features, columns=[f"sample_{i}" for i in idx])
        for idx in np.array_split(order, n_sites)
    ]


def _read_tsv(content: bytes, **kw: Any) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content), sep="\t", **kw)


@pytest.mark.parametrize(
    ("loader", "n_sites", "pcs", "holes"),
    [(load_wine, 5, 10, 0), (load_breast_cancer, 3, 4, 40), (load_iris, 2, 10, 0)],
)
def test_svd_twin_matches_numpy_on_the_pooled_samples(
    loader: Any, n_sites: int, pcs: int, holes: int
) -> None:
    data = loader().data.astype(np.float64)
    rng = np.random.default_rng(1)
    if holes:  # values below −1 have no log2(x + 1): NaN, imputed after scaling; one feature
        # has more of them than max_nan_fraction allows
        data[rng.integers(0, len(data), holes), rng.integers(0, data.shape[1], holes)] = -5.0
        data[: int(0.6 * len(data)), 5] = -5.0
    parts = _svd_sites(data, n_sites, seed=2)
    config = {"pcs": pcs, "log_transform": True, "max_nan_fraction": 0.5}
    expected = _svd_files(parts, config)
    sites = {
        f"c{i}": Table.from_pandas(pd.read_csv(io.StringIO(p.to_csv())))
        for i, p in enumerate(parts)
    }
    params = {"pcs": pcs, "highly_variable": False, "max_nan_fraction": 0.5}
    sim = simulate(SVD, params, sites, min_count=1)
    k = len(expected["s"])
    assert k == min(pcs, parts[0].shape[1], data.shape[1] - (1 if holes else 0) - 1)
    np.testing.assert_allclose(sim.result["singular_values"], expected["s"], rtol=1e-10)
    for i in range(n_sites):
        out = sim.site_outputs[f"c{i}"]
        want = expected["sites"][i]
        for name, key in [
            ("left_eigenvectors.tsv", "left"),
            ("right_eigenvectors.tsv", "right"),
            ("projections.tsv", "projections"),
        ]:
            got = _read_tsv(out[name], index_col=0)
            assert list(got.index.astype(str)) == list(want[key].index.astype(str)), name
            assert list(got.columns) == [str(j) for j in range(k)], name
            scale = np.abs(want[key].to_numpy()).max()
            np.testing.assert_allclose(
                got.to_numpy(), want[key].to_numpy(), rtol=1e-9, atol=1e-10 * scale, err_msg=name
            )
        eig = _read_tsv(out["eigenvalues.tsv"], header=None).to_numpy()[:, 0]
        np.testing.assert_allclose(eig, expected["s"], rtol=1e-10)
        varex = _read_tsv(out["explained_variance.tsv"], index_col=0)["0"].to_numpy()
        np.testing.assert_allclose(varex, expected["varex"], rtol=1e-10)
        scaled = _read_tsv(out["scaled_data.tsv"], header=None).to_numpy()
        np.testing.assert_allclose(scaled, want["scaled"], rtol=1e-12, atol=1e-13)
        means = _read_tsv(out["mean.tsv"], index_col=0)["0"].to_numpy()
        np.testing.assert_allclose(means, expected["means"], rtol=1e-13)


def test_svd_twin_keeps_the_apps_lowest_variance_selection() -> None:
    """``highly_variable`` keeps floor(p · perc_highly_var) features of LOWEST deviation, as the
    app's ``np.argsort(std)[0:hv]`` does; without centring and scaling Z is the log data."""
    data = load_wine().data
    parts = _svd_sites(data, 3, seed=0)
    sites = {
        f"c{i}": Table.from_pandas(pd.read_csv(io.StringIO(p.to_csv())))
        for i, p in enumerate(parts)
    }
    params = {
        "pcs": 2,
        "highly_variable": True,
        "perc_highly_var": 0.5,
        "center": False,
        "variance": False,
        "max_nan_fraction": 1.0,
    }
    sim = simulate(SVD, params, sites, min_count=1)
    logged = np.log2(pd.concat(parts, axis=1) + 1)
    std = logged.std(axis=1, ddof=1)
    lowest = list(std.sort_values(kind="stable").index[: int(13 * 0.5)])
    assert sorted(sim.result["features"]) == sorted(lowest)
    z = logged.loc[sim.result["features"]].to_numpy()
    s = np.linalg.svd(z, compute_uv=False)[:2]
    np.testing.assert_allclose(sim.result["singular_values"], s, rtol=1e-10)


def test_svd_twin_refuses_a_site_with_fewer_samples_than_min_count() -> None:
    parts = _svd_sites(load_iris().data, 2, seed=0)
    parts[1] = parts[1].iloc[:, :3]
    sites = {
        f"c{i}": Table.from_pandas(pd.read_csv(io.StringIO(p.to_csv())))
        for i, p in enumerate(parts)
    }
    with pytest.raises(Exception, match="min_count"):
        simulate(SVD, {"pcs": 2, "min_samples": 5}, sites, min_count=1)


def test_forest_twin_with_text_labels_writes_them_as_the_app() -> None:
    label = "species"
    frame = _frame(load_iris, label)
    frame[label] = np.array(["setosa", "versicolor", "virginica"])[frame[label]]
    parts = [_through_csv(p) for p in _split(frame, [50, 50, 50], 4)]
    expected = _fc_random_forest(parts, parts, label, 20, 1)
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(parts)}
    sim = simulate(
        FOREST, {"label": label, "estimators": 20, "random_state": 1}, sites, min_count=1
    )
    assert sim.result["classes"] == ["setosa", "versicolor", "virginica"]
    for i, files in enumerate(expected):
        for name, content in files.items():
            assert sim.site_outputs[f"s{i}"][name] == content, (i, name)
