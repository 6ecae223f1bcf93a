"""kmeans, pca and random-forest under ``secure = true``, at the app level.

``drive`` runs an app's whole conversation as the round driver does, with every request and
reply through the wire encoding; with ``secure=True`` it refuses any phase not declared summed
and hands each aggregate only ``{SUM: sum_replies(replies)}`` — the reference semantics of
secure aggregation — so an aggregate that looked at one site's reply would fail. Results are
checked against the plaintext run and against the twins (scikit-learn; kmeans' start from
tests/apps/kmeans_reference.py), on 1, 3 and 7 sites.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge import exact_power_sums
from fedflow.apps._merge_learning import AccurateSum, two_product
from fedflow.apps.base import (
    SUM,
    Continue,
    CoordinatorContext,
    Done,
    SiteContext,
    SiteInfo,
    Table,
    decode_payload,
    encode_payload,
    merged_columns,
    sum_replies,
)
from fedflow.errors import AppError
from fedflow.results.compare import Tolerance, compare_results
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.apps.kmeans_reference import kmeans_reference

SITES = [(1, "iid"), (3, "iid"), (3, "unbalanced"), (7, "iid"), (7, "unbalanced")]
_IRIS = ["sepal_length_(cm)", "sepal_width_(cm)", "petal_length_(cm)", "petal_width_(cm)"]
_WINE = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280/od315_of_diluted_wines",
    "proline",
]
_BC = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness"]
EXACT = {"": Tolerance(1e-8, 1e-12)}


@dataclass
class Driven:
    """The outcome of ``drive``: the final step, the phases run, each site's context."""

    done: Done
    phases: list[str] = field(default_factory=list)
    sites: dict[str, SiteContext] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        return self.done.result


def _kind(column: np.ndarray) -> str:
    return {"i": "int", "u": "int", "b": "int", "f": "float"}.get(column.dtype.kind, "str")


def drive(
    app_name: str,
    raw: dict[str, Any],
    tables: dict[str, Table],
    *,
    secure: bool,
    seed: int | None = 0,
    min_count: int = 1,
) -> Driven:
    """Run ``app_name`` over ``tables`` (site → Table) as the round driver does; under
    ``secure`` every phase must be summed and each aggregate gets only the sum of the replies."""
    app = get_app(app_name)
    infos = {
        # the runtime knows the kinds from the site's schema; read them past any override
        name: SiteInfo(name, t.n_rows, {c: _kind(Table.__getitem__(t, c)) for c in t.columns})
        for name, t in tables.items()
    }
    params = app.resolve(app.parse_params(raw), merged_columns(infos))
    ctx = CoordinatorContext(sites=infos, seed=seed, min_count=min_count, secure=secure)
    sites = {
        name: SiteContext(name, seed=seed, min_count=min_count, secure=secure) for name in tables
    }
    driven = Driven(done=Done({}), sites=sites, notes=ctx.notes)
    step = app.start(params, ctx)
    while isinstance(step, Continue):
        phase = app.check_phase(step.phase)
        if secure:
            assert phase.summed, f"phase '{step.phase}' runs under secure but is not summed"
        driven.phases.append(step.phase)
        ctx.round += 1
        replies = {}
        for name, table in tables.items():
            request = (step.per_site or {}).get(name, step.request)
            request = decode_payload(encode_payload(request), phase.request)
            sites[name].round = ctx.round
            reply = app.local(table, params, step.phase, request, sites[name])
            replies[name] = decode_payload(encode_payload(reply), phase.reply)
        if secure:
            replies = {SUM: sum_replies(replies, phase.reply)}
        step = app.aggregate(step.phase, replies, params, ctx)
    driven.done = step
    return driven


def _tables(name: str, n_sites: int, mode: str, columns: list[str]) -> dict[str, Table]:
    parts = split(dataset(name), n_sites, mode) if n_sites > 1 else [dataset(name)]
    return {f"site-{i + 1}": Table.from_pandas(p[columns]) for i, p in enumerate(parts)}


def _pooled(tables: dict[str, Table]) -> pd.DataFrame:
    return pd.concat([t.to_pandas() for t in tables.values()], ignore_index=True)


def _assert_match(federated: dict[str, Any], reference: dict[str, Any], tol: Any) -> None:
    comparison = compare_results(federated, reference, tolerances=tol)
    bad = [f"{i.path}: {i.federated!r} vs {i.centralized!r}" for i in comparison.mismatches]
    assert comparison.items and comparison.status == "match", "\n".join(bad[:5])


# -- accurate sums: checked against exact rational arithmetic (fedflow.apps._merge) ------------
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e8])
def test_accurate_sums_carry_about_100_bits(offset: float) -> None:
    rng = np.random.default_rng(5)
    x = offset + rng.normal(size=(2001, 3)) * np.array([1.0, 1e-3, 1e3])
    sums, squares = AccurateSum((3,)), AccurateSum((3,))
    for start in range(0, len(x), 333):  # batches of any size give the same total
        block = x[start : start + 333]
        sums.add(block)
        p, e = two_product(block, block)
        squares.add(p, small=e)
    for j in range(3):
        want = exact_power_sums(x[:, j], 2)
        for got, exact in zip((sums.exact()[j], squares.exact()[j]), want, strict=True):
            assert abs(got - exact) <= abs(exact) * Fraction(1, 1 << 98)


def test_gram_factor_is_the_pooled_centred_factor() -> None:
    """From the exact Σ aaᵀ of rows a = [1, x] far from the origin: the mean, and an upper
    triangular R with RᵀR the pooled centred scatter."""
    from fedflow.apps._exact import ExactGram
    from fedflow.apps.pca import gram_factor

    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)) + [5e3, -2.0, 4e6, 0.0]
    gram = ExactGram(5)
    for part in (x[:100], x[100:]):
        gram.add(np.column_stack([np.ones(len(part)), part]))
    mean, r = gram_factor(len(x), gram.upper(), 4)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(r.T @ r, centred.T @ centred, rtol=1e-9)
    assert np.array_equal(r, np.triu(r))
    with pytest.raises(AppError, match="count 300 rows, not 299"):
        gram_factor(299, gram.upper(), 4)


# -- kmeans ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_sites,mode", SITES)
@pytest.mark.parametrize(
    "name,columns,params",
    [
        ("iris", _IRIS, {"k": 3, "tol": 0.0}),
        ("wine", _WINE, {"k": 3, "seed": 2}),
        ("breast_cancer", _BC, {"k": 4, "max_iter": 5}),
    ],
)
def test_kmeans_secure_equals_plaintext_and_the_twin(
    name: str, columns: list[str], params: dict[str, Any], n_sites: int, mode: str
) -> None:
    tables = _tables(name, n_sites, mode, columns)
    raw = {**params, "columns": columns}
    secure = drive("kmeans", raw, tables, secure=True)
    plain = drive("kmeans", raw, tables, secure=False)
    assert secure.result == plain.result  # every sum exact, rounded once: the same bits
    assert secure.phases == plain.phases and secure.phases[0] == "moments"
    sim = simulate("kmeans", raw, tables, seed=0, min_count=1)  # the real runtime, in the clear
    assert sim.result == plain.result
    app = get_app("kmeans")
    reference = kmeans_reference(_pooled(tables), raw)
    _assert_match(
        app.comparable(secure.result),
        app.comparable(reference),
        {**EXACT, "iterations": Tolerance(0.0), "cluster_sizes": Tolerance(0.0)},
    )


def test_kmeans_secure_keeps_min_count_at_each_site() -> None:
    """The sites still withhold small clusters under secure aggregation (it hides a site's
    sums from the coordinator, not from a sum over few sites), and the run still equals the
    plaintext one."""
    tables = _tables("iris", 7, "unbalanced", _IRIS)
    raw = {"columns": _IRIS, "k": 5, "seed": 3}
    secure = drive("kmeans", raw, tables, secure=True, min_count=5)
    plain = drive("kmeans", raw, tables, secure=False, min_count=5)
    assert secure.result["withheld"] > 0
    assert secure.result == plain.result and secure.notes == plain.notes


def test_kmeans_declares_every_phase_summed() -> None:
    app = get_app("kmeans")
    assert app.secure is True and all(p.summed for p in app.phases.values())


# -- pca -------------------------------------------------------------------------------------
_PCA_CASES = [
    ("wine", _WINE, {}),
    ("wine", _WINE, {"standardize": True, "n_components": 5}),
    ("iris", _IRIS, {"n_components": 2}),
    ("breast_cancer", _BC, {"standardize": True}),
    ("diabetes", ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], {}),
]


@pytest.mark.parametrize("n_sites,mode", SITES)
@pytest.mark.parametrize("name,columns,params", _PCA_CASES)
def test_pca_secure_matches_plaintext_and_scikit_learn(
    name: str, columns: list[str], params: dict[str, Any], n_sites: int, mode: str
) -> None:
    tables = _tables(name, n_sites, mode, columns)
    raw = {**params, "columns": columns}
    secure = drive("pca", raw, tables, secure=True)
    plain = drive("pca", raw, tables, secure=False)
    assert secure.phases == ["gram"] and plain.phases == ["factor"]
    _assert_match(secure.result, plain.result, EXACT)
    app = get_app("pca")
    twin = app.centralized(_pooled(tables), app.parse_params(raw))
    _assert_match(secure.result, twin, EXACT)


def test_pca_secure_projections_stay_at_the_sites() -> None:
    tables = _tables("wine", 3, "unbalanced", _WINE)
    raw = {"columns": _WINE, "standardize": True, "n_components": 3, "projections": True}
    secure = drive("pca", raw, tables, secure=True)
    plain = drive("pca", raw, tables, secure=False)
    assert secure.phases == ["gram", "project"]
    for name in tables:
        mine = pd.read_csv(io.BytesIO(secure.sites[name].outputs["projections.csv"]))
        theirs = pd.read_csv(io.BytesIO(plain.sites[name].outputs["projections.csv"]))
        assert list(mine.columns) == ["PC1", "PC2", "PC3"] and len(mine) == tables[name].n_rows
        np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy(), rtol=1e-8, atol=1e-10)


def test_pca_secure_rank_deficient_data_has_an_exact_null_component() -> None:
    """A column that is the sum of two others: the last component is that null direction and
    its variance is 0 (plaintext: rounding noise), as scikit-learn within 1e-12."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(90, 3)) * [1.0, 2.0, 0.5] + [10.0, -3.0, 100.0]
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 0] + x[:, 1]})
    tables = {
        f"s{i}": Table.from_pandas(part.reset_index(drop=True))
        for i, part in enumerate([frame.iloc[:30], frame.iloc[30:50], frame.iloc[50:]])
    }
    secure = drive("pca", {}, tables, secure=True)
    assert secure.result["explained_variance"][-1] == 0.0
    app = get_app("pca")
    twin = app.centralized(frame, app.parse_params({"columns": ["a", "b", "c", "d"]}))
    _assert_match(secure.result, twin, EXACT)
    null = np.asarray(secure.result["components"][-1])
    np.testing.assert_allclose(
        np.abs(null), np.array([1.0, 1.0, 0.0, 1.0]) / np.sqrt(3), atol=1e-12
    )


def test_pca_secure_refuses_to_standardize_a_constant_column() -> None:
    tables = {
        "a": Table({"x": np.arange(6.0), "c": np.full(6, 0.1)}),
        "b": Table({"x": np.arange(5.0) * 3.1, "c": np.full(5, 0.1)}),
    }
    with pytest.raises(AppError, match=r"cannot standardize constant column\(s\): c"):
        drive("pca", {"standardize": True}, tables, secure=True)


def test_pca_secure_on_one_site_of_two_rows() -> None:
    tables = {"a": Table({"x": np.array([1.0, 3.0]), "y": np.array([2.0, -2.0])})}
    result = drive("pca", {}, tables, secure=True).result
    assert result["explained_variance"] == pytest.approx([10.0, 0.0], rel=1e-15, abs=1e-15)
    assert result["mean"] == [2.0, 0.0]


# -- random forest ---------------------------------------------------------------------------
def test_random_forest_refuses_secure_with_a_one_line_reason() -> None:
    app = get_app("random-forest")
    assert isinstance(app.secure, str) and app.secure and "\n" not in app.secure
    assert "sum" in app.secure


# -- end to end: the real secure aggregation protocol (runtime/secure.py) ------------------------
@pytest.mark.parametrize("n_sites,mode,min_count", [(3, "unbalanced", 1), (7, "iid", 5)])
def test_kmeans_through_the_secure_protocol_equals_the_plaintext_run(
    n_sites: int, mode: str, min_count: int
) -> None:
    tables = _tables("iris", n_sites, mode, _IRIS)
    raw = {"columns": _IRIS, "k": 3, "seed": 5}
    secure = simulate("kmeans", raw, tables, seed=0, min_count=min_count, secure=True)
    plain = simulate("kmeans", raw, tables, seed=0, min_count=min_count)
    assert secure.result == plain.result
    assert secure.rounds == plain.rounds
    assert secure.result == drive("kmeans", raw, tables, secure=True, min_count=min_count).result


@pytest.mark.parametrize("n_sites,mode", [(2, "iid"), (3, "unbalanced"), (7, "iid")])
def test_pca_through_the_secure_protocol_matches_plaintext_and_scikit_learn(
    n_sites: int, mode: str
) -> None:
    tables = _tables("wine", n_sites, mode, _WINE)
    raw = {"columns": _WINE, "standardize": True, "projections": True}
    secure = simulate("pca", raw, tables, seed=0, min_count=1, secure=True)
    plain = simulate("pca", raw, tables, seed=0, min_count=1)
    assert secure.rounds == plain.rounds == 2  # gram or factor, then project
    _assert_match(secure.result, plain.result, EXACT)
    app = get_app("pca")
    _assert_match(secure.result, app.centralized(_pooled(tables), app.parse_params(raw)), EXACT)
    for name in tables:  # the scores were written at each site, not sent
        mine = pd.read_csv(io.BytesIO(secure.site_outputs[name]["projections.csv"]))
        theirs = pd.read_csv(io.BytesIO(plain.site_outputs[name]["projections.csv"]))
        np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy(), rtol=1e-8, atol=1e-10)


def test_random_forest_with_secure_is_refused_with_its_reason() -> None:
    tables = _tables("iris", 3, "iid", [*_IRIS, "target"])
    with pytest.raises(AppError, match="cannot run with secure = true: the sites send trees"):
        simulate("random-forest", {"target": "target"}, tables, seed=0, min_count=1, secure=True)
