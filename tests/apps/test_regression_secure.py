"""The secure formulations of linear-regression, glm and logistic-regression (``secure = true``):
exact cross-products (``fedflow.apps._exact``) against Fraction arithmetic, Longley against NIST's
certified values, every regression fidelity case against its twin within the unchanged
tolerances, and what a site sends.

``converse`` drives an app's conversation by hand, as the round driver does: the sites' replies
cross the wire codec, and under ``secure`` only summed phases may run and the aggregate receives
``{SUM: sum_replies(...)}`` — the reference semantics of secure aggregation. The last tests run
the real thing end to end: coordinator, round driver, the masking protocol and node agents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedflow.apps import get_app
from fedflow.apps._exact import (
    ExactGram,
    RankDeficient,
    full_matrix,
    solve_normal_equations,
    split_float64,
    sqrt_fraction,
)
from fedflow.apps.base import (
    SUM,
    Continue,
    CoordinatorContext,
    Done,
    Payload,
    SiteContext,
    SiteInfo,
    Table,
    check_columns,
    decode_payload,
    encode_payload,
    merged_columns,
    sum_replies,
)
from fedflow.errors import AppError, DataError
from fedflow.results.compare import compare_results
from tests.apps.cases.core import CASES as CORE_CASES
from tests.apps.cases.learning import CASES as LEARNING_CASES
from tests.apps.fidelity import Case, dataset, independent_params, split
from tests.apps.test_linear import (
    CERTIFIED_COEFFICIENTS,
    CERTIFIED_R2,
    CERTIFIED_RESIDUAL_SD,
    CERTIFIED_STD_ERRORS,
)

REGRESSION_APPS = ("linear-regression", "logistic-regression", "glm")
LONGLEY = {"target": "TOTEMP", "features": ["GNPDEFL", "GNP", "UNEMP", "ARMED", "POP", "YEAR"]}


# -- a conversation driven by hand ----------------------------------------------------------------
def _kind(values: np.ndarray) -> str:
    return "int" if values.dtype.kind in "iub" else "float" if values.dtype.kind == "f" else "str"


@dataclass
class Conversation:
    """What ``converse`` returns: the final step, the phases run, and every reply sent."""

    done: Done
    phases: list[str]
    replies: list[dict[str, Payload]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        return self.done.result


def converse(
    app_name: str,
    raw: Mapping[str, Any],
    sites: Mapping[str, Table],
    *,
    secure: bool,
    min_count: int = 1,
    view: Callable[[Table], Table] = lambda table: table,
) -> Conversation:
    """Run ``app_name`` over ``sites`` phase by phase; each site checks its columns and
    ``min_count`` first (as at Prepare), then computes on ``view(table)``. Replies cross the wire
    codec; with ``secure`` every phase must be summed and the aggregate gets only the sum."""
    app = get_app(app_name)
    infos = {
        s: SiteInfo(s, t.n_rows, {c: _kind(t[c]) for c in t.columns}) for s, t in sites.items()
    }
    params = app.resolve(app.parse_params(dict(raw)), merged_columns(infos))
    needed = app.columns(params)
    for site, table in sites.items():
        check_columns(table, needed, min_count=min_count, where=site)
    ctx = CoordinatorContext(sites=infos, secure=secure, min_count=min_count)
    site_ctx = {s: SiteContext(site=s, secure=secure, min_count=min_count) for s in sites}
    views = {s: view(t) for s, t in sites.items()}
    step = app.start(params, ctx)
    phases: list[str] = []
    sent: list[dict[str, Payload]] = []
    while isinstance(step, Continue):
        phase = app.check_phase(step.phase)
        phases.append(step.phase)
        assert len(phases) <= 200, "the conversation does not end"
        request = decode_payload(encode_payload(step.request), phase.request)
        replies: dict[str, Payload] = {}
        for site, table in views.items():
            reply = app.local(table, params, step.phase, request, site_ctx[site])
            replies[site] = decode_payload(encode_payload(reply), phase.reply)
        sent.append(replies)
        if secure:
            assert phase.summed, f"phase '{step.phase}' runs under secure but is not summed"
            step = app.aggregate(step.phase, {SUM: sum_replies(replies, phase.reply)}, params, ctx)
        else:
            step = app.aggregate(step.phase, replies, params, ctx)
    return Conversation(step, phases, sent, ctx.notes)


def _sites(frame: pd.DataFrame, n: int, mode: str = "iid") -> dict[str, Table]:
    return {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, n, mode))}


# -- exact cross-products against Fraction arithmetic --------------------------------------------
def _fraction_gram(a: np.ndarray) -> tuple[Fraction, ...]:
    k = a.shape[1]
    exact = [[Fraction(float(v)) for v in row] for row in a]
    return tuple(
        sum((row[r] * row[c] for row in exact), Fraction(0)) for r in range(k) for c in range(r, k)
    )


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
# values of every magnitude (subnormals to 1e308) and values of one realistic scale
wild = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), elements=finite)
tame = hnp.arrays(
    np.float64,
    st.tuples(st.integers(0, 40), st.integers(1, 5)),
    elements=st.floats(-1e6, 1e6, allow_nan=False, width=64),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(wild, tame), st.data())
def test_exact_gram_equals_fraction_sums(a: np.ndarray, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, a.shape[0]))
    gram = ExactGram(a.shape[1])
    gram.add(a[:cut])
    gram.add(a[cut:])
    assert gram.upper() == _fraction_gram(a)
    assert gram.rows == a.shape[0]


def test_exact_gram_over_many_rows_and_wide_columns() -> None:
    # 3,000 rows with products that cancel to the last bit, and a column spanning 2,000 bits
    # (1e-300 next to 1e300: the Python-integer path)
    rng = np.random.default_rng(4)
    a = rng.normal(size=(3000, 3)) * np.array([1.0, 1e8, 1e-8])
    a[::2, 0] = -a[1::2, 0]
    a[:, 2] = np.where(rng.uniform(size=3000) < 0.5, 1e-300, 1e300) * rng.normal(size=3000)
    gram = ExactGram(3)
    for start in range(0, 3000, 1000):
        gram.add(a[start : start + 1000])
    assert gram.upper() == _fraction_gram(a)


def test_exact_gram_refuses_non_finite_values_naming_the_column() -> None:
    with pytest.raises(ValueError, match="column 1: non-finite"):
        ExactGram(2).add(np.array([[1.0, np.inf]]))


@given(hnp.arrays(np.float64, st.integers(0, 20), elements=finite))
def test_split_float64_is_exact_with_odd_mantissas(values: np.ndarray) -> None:
    mantissa, exponent = split_float64(values)
    for v, m, e in zip(values, mantissa.tolist(), exponent.tolist(), strict=True):
        assert Fraction(float(v)) == m * Fraction(2) ** e
        assert m % 2 == 1 or (m == 0 and e == 0)


def _fraction_solve(gram: list[list[Fraction]]) -> tuple[list[Fraction], list[list[Fraction]]]:
    """Gauss–Jordan in Fractions: β and (XᵀX)⁻¹ from a Gram matrix of [X | y] (reference)."""
    p = len(gram) - 1
    m = [
        row[:p] + [row[p]] + [Fraction(int(i == j)) for j in range(p)]
        for i, row in enumerate(gram[:p])
    ]
    for k in range(p):
        pivot = next(i for i in range(k, p) if m[i][k] != 0)
        m[k], m[pivot] = m[pivot], m[k]
        m[k] = [v / m[k][k] for v in m[k]]
        for i in range(p):
            if i != k and m[i][k] != 0:
                m[i] = [a - m[i][k] * b for a, b in zip(m[i], m[k], strict=True)]
    return [row[p] for row in m], [row[p + 1 :] for row in m]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(6, 30), st.integers(1, 5)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, width=64),
    )
)
def test_exact_solve_equals_gauss_jordan_in_fractions(a: np.ndarray) -> None:
    gram = ExactGram(a.shape[1])
    gram.add(a)
    matrix = full_matrix(gram.upper(), a.shape[1])
    try:
        fit = solve_normal_equations(matrix)
    except RankDeficient:
        return  # collinear draws: refused (checked on purpose below)
    coef, inverse = _fraction_solve(matrix)
    assert fit.coef == coef
    assert fit.inverse == inverse
    p = a.shape[1] - 1
    residual = [
        Fraction(float(r[p])) - sum(Fraction(float(r[j])) * coef[j] for j in range(p)) for r in a
    ]
    assert fit.rss == sum((e * e for e in residual), Fraction(0))


def test_exact_solve_names_every_collinear_column() -> None:
    x = np.arange(12.0)
    a = np.column_stack([np.ones(12), x, 2 * x, x**2, 3 * np.ones(12), x % 5])
    gram = ExactGram(6)
    gram.add(a)
    with pytest.raises(RankDeficient) as info:
        solve_normal_equations(full_matrix(gram.upper(), 6))
    assert info.value.columns == [2, 4]  # 2x and the second constant; the others are fine


@given(st.fractions(min_value=0, max_denominator=10**30).filter(lambda q: q < 10**300))
def test_sqrt_fraction_is_correctly_rounded(value: Fraction) -> None:
    root = sqrt_fraction(value)
    if value == 0:
        assert root == 0.0
        return
    below = Fraction(math.nextafter(root, 0.0))
    above = Fraction(math.nextafter(root, math.inf))
    exact = Fraction(root)
    # √value lies within half an ulp on either side: the squares of the midpoints bound it
    assert ((below + exact) / 2) ** 2 <= value <= ((exact + above) / 2) ** 2


def test_exact_values_cross_the_wire_unchanged() -> None:
    from fedflow.apps.linear import CrossProducts

    rng = np.random.default_rng(0)
    gram = ExactGram(3)
    gram.add(rng.normal(size=(50, 3)) * np.array([1e-200, 1.0, 1e200]))
    reply = CrossProducts(gram=gram.upper(), n=50)
    assert decode_payload(encode_payload(reply), CrossProducts) == reply


# -- linear regression: Longley to every certified digit -------------------------------------------
@pytest.mark.parametrize("n_sites", [1, 3, 7])
def test_secure_longley_matches_every_certified_digit(n_sites: int) -> None:
    sites = _sites(dataset("longley"), n_sites)
    run = converse("linear-regression", LONGLEY, sites, secure=True)
    assert run.phases == ["cross"]
    result = run.result
    coef = np.array(list(result["coefficients"].values()))
    se = np.array(list(result["std_errors"].values()))
    # NIST gives 15 significant digits: the certified values are themselves rounded by 5e-16
    np.testing.assert_allclose(coef, CERTIFIED_COEFFICIENTS, rtol=1e-14)
    np.testing.assert_allclose(se, CERTIFIED_STD_ERRORS, rtol=1e-14)
    assert result["r_squared"] == pytest.approx(CERTIFIED_R2, rel=1e-14)
    assert result["sigma"] == pytest.approx(CERTIFIED_RESIDUAL_SD, rel=1e-14)
    plain = converse("linear-regression", LONGLEY, sites, secure=False)
    tolerances = next(c for c in CORE_CASES if c.id == "linear-regression-longley").tolerances
    comparison = compare_results(result, plain.result, tolerances=tolerances)
    assert comparison.status == "match"


def test_secure_linear_regression_without_intercept_is_the_uncentred_fit() -> None:
    import statsmodels.api as sm

    frame = dataset("diabetes")
    features = ["age", "bmi", "bp", "s5"]
    run = converse(
        "linear-regression",
        {"target": "target", "features": features, "intercept": False},
        _sites(frame, 3),
        secure=True,
        min_count=5,
    )
    fit = sm.OLS(frame["target"], frame[features]).fit()
    for name, value in zip(features, fit.params, strict=True):
        assert run.result["coefficients"][name] == pytest.approx(value, rel=1e-12)
    assert run.result["r_squared"] == pytest.approx(fit.rsquared, rel=1e-12)
    assert run.result["adj_r_squared"] == pytest.approx(fit.rsquared_adj, rel=1e-12)


def test_a_site_sends_only_its_cross_products_and_count() -> None:
    frame = dataset("longley")
    run = converse("linear-regression", LONGLEY, _sites(frame, 3), secure=True)
    (replies,) = run.replies
    k = len(LONGLEY["features"]) + 2  # intercept, features, target
    for reply in replies.values():
        fields = encode_payload(reply)
        assert set(fields) == {"gram", "n"}
        assert len(fields["gram"]) == k * (k + 1) // 2
    assert sum(r.n for r in replies.values()) == len(frame)  # type: ignore[attr-defined]
    # the (intercept, target) entry is the site's exact Σy
    site, reply = next(iter(replies.items()))
    part = split(frame, 3, "iid")[0]
    assert reply.gram[k - 1] == sum(Fraction(float(v)) for v in part["TOTEMP"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "secure"])
def test_a_constant_target_gives_an_undefined_r_squared(secure: bool) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"x": rng.normal(size=30), "y": np.full(30, 3.0)})
    run = converse("linear-regression", {"target": "y"}, _sites(frame, 2), secure=secure)
    assert math.isnan(run.result["r_squared"]) and math.isnan(run.result["adj_r_squared"])
    assert any("R² is undefined" in note for note in run.notes)
    assert run.result["coefficients"]["intercept"] == pytest.approx(3.0, rel=1e-14)


def test_secure_linear_regression_refuses_collinear_features_by_name() -> None:
    frame = dataset("longley").copy()
    frame["GNP2"] = 2 * frame["GNP"]
    params = {"target": "TOTEMP", "features": ["GNP", "GNP2", "UNEMP"]}
    with pytest.raises(AppError, match="rank-deficient.*: GNP2"):
        converse("linear-regression", params, _sites(frame, 2), secure=True)


def test_secure_linear_regression_with_too_few_rows_is_an_app_error() -> None:
    frame = dataset("longley").iloc[:6]
    with pytest.raises(AppError, match="6 observations for 7 coefficients"):
        converse("linear-regression", LONGLEY, _sites(frame, 2), secure=True)


# -- every regression fidelity case, securely ---------------------------------------------------
SECURE_CASES = [c for c in CORE_CASES + LEARNING_CASES if c.app in REGRESSION_APPS]


@pytest.mark.parametrize("n_sites,mode", [(3, "iid"), (7, "unbalanced")])
@pytest.mark.parametrize("case", SECURE_CASES, ids=[c.id for c in SECURE_CASES])
def test_secure_matches_the_twin_within_the_app_tolerance(
    case: Case, n_sites: int, mode: str
) -> None:
    app = get_app(case.app)
    parts = split(dataset(case.dataset), n_sites, mode)
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    run = converse(case.app, case.params, sites, secure=True, min_count=case.min_count)
    assert all(app.check_phase(p).summed for p in run.phases)
    pooled = pd.concat(parts, ignore_index=True)
    ref_params = app.parse_params(independent_params(case.app, case.params, pooled))
    central = app.centralized(pooled[list(app.columns(ref_params))], ref_params)
    comparison = compare_results(
        app.comparable(run.result), app.comparable(central), tolerances=case.tolerances
    )
    worst = [i for i in comparison.mismatches][:5]
    assert comparison.status == "match", "\n".join(
        f"{i.path}: secure {i.federated!r} vs twin {i.centralized!r}" for i in worst
    )


# -- glm and logistic: the same iterates as the plaintext path -----------------------------------
@pytest.mark.parametrize(
    "app, params, name",
    [
        ("glm", {"target": "y", "family": "poisson"}, "poisson"),
        ("glm", {"target": "GRADE", "family": "binomial"}, "spector"),
        ("logistic-regression", {"target": "GRADE"}, "spector"),
    ],
)
def test_secure_iterations_follow_the_plaintext_ones(
    app: str, params: dict[str, Any], name: str
) -> None:
    frame = _poisson_frame() if name == "poisson" else dataset(name)
    sites = _sites(frame, 3)
    plain = converse(app, params, sites, secure=False)
    secure = converse(app, params, sites, secure=True)
    assert len(secure.phases) == len(plain.phases)
    assert secure.result["iterations"] == plain.result["iterations"]
    for key in ("coefficients", "std_errors"):
        for coef, value in plain.result[key].items():
            assert secure.result[key][coef] == pytest.approx(value, rel=1e-10)
    assert secure.result["loglik"] == pytest.approx(plain.result["loglik"], rel=1e-12)


def _poisson_frame(seed: int = 1, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    y = rng.poisson(np.exp(0.3 + 0.5 * x1 - 0.8 * x2))
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y})


def test_glm_sites_send_sums_only() -> None:
    run = converse(
        "glm", {"target": "y", "family": "poisson"}, _sites(_poisson_frame(), 3), secure=True
    )
    assert run.phases[0] == "start_sums" and set(run.phases[1:]) == {"irls_sums"}
    start = [encode_payload(r) for r in run.replies[0].values()]
    assert all(
        set(r) == {"gram", "deviance", "loglik", "n", "y_sums", "ylogy", "log_factorials"}
        for r in start
    )
    assert all(len(r["gram"]) == 10 and len(r["y_sums"]) == 2 for r in start)  # 4 × 4 triangle
    later = [encode_payload(r) for replies in run.replies[1:] for r in replies.values()]
    assert all(set(r) == {"gram", "deviance", "loglik"} for r in later)


def test_secure_glm_gaussian_is_secure_linear_regression() -> None:
    sites = _sites(dataset("longley"), 3)
    glm = converse("glm", LONGLEY, sites, secure=True).result
    ols = converse("linear-regression", LONGLEY, sites, secure=True).result
    assert glm["coefficients"] == ols["coefficients"]  # the same exact solve, rounded once
    np.testing.assert_allclose(
        list(glm["coefficients"].values()), CERTIFIED_COEFFICIENTS, rtol=1e-14
    )
    assert glm["scale"] == pytest.approx(ols["sigma"] ** 2, rel=1e-15)


def test_secure_glm_refusals_are_those_of_the_plaintext_path() -> None:
    zeros = pd.DataFrame({"x1": np.linspace(0, 1, 30), "y": np.zeros(30, dtype=int)})
    with pytest.raises(AppError, match="'y' holds one class only"):
        converse("glm", {"target": "y", "family": "binomial"}, _sites(zeros, 3), secure=True)
    with pytest.raises(AppError, match="'y' is zero everywhere"):
        converse("glm", {"target": "y", "family": "poisson"}, _sites(zeros, 3), secure=True)
    frame = _poisson_frame()
    frame["x3"] = 2 * frame["x1"]
    with pytest.raises(AppError, match=r"glm \(poisson\).*rank-deficient.*: x3"):
        converse("glm", {"target": "y", "family": "poisson"}, _sites(frame, 3), secure=True)


def test_secure_glm_site_below_min_count_refuses() -> None:
    app = get_app("glm")
    params = app.parse_params({"target": "y", "features": ["x1"], "family": "poisson"})
    table = Table({"y": np.array([0, 1, 2, 1]), "x1": np.arange(4.0)})
    with pytest.raises(DataError, match="min_count"):
        app.local(
            table,
            params,
            "start_sums",
            app.phases["start_sums"].request(),
            SiteContext(site="a", min_count=5, secure=True),
        )


def test_secure_glm_reports_non_convergence() -> None:
    params = {"target": "y", "family": "poisson", "max_iter": 2}
    run = converse("glm", params, _sites(_poisson_frame(), 3), secure=True)
    assert run.result["converged"] is False and run.result["iterations"] == 2
    assert any("did not converge" in note for note in run.notes)


def test_every_regression_app_declares_secure_and_streaming() -> None:
    for name in REGRESSION_APPS:
        app = get_app(name)
        assert app.secure is True and app.streaming is True


# -- end to end: the real coordinator, round driver, secure protocol and node agents -------------
def _run_secure_spied(
    app: str, params: Mapping[str, Any], sites: Mapping[str, Table]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Run ``app`` with ``secure = true`` over in-memory node agents; return the result and
    (site, message type) of everything each site sent back."""
    import asyncio

    from fedflow.connectors.memory import MemoryConnector
    from fedflow.node.agent import NodeAgent
    from fedflow.runtime.coordinator import Coordinator
    from fedflow.runtime.simulate import in_memory
    from fedflow.wire import Message

    sent: list[tuple[str, str]] = []

    def spying(site: str, agent: NodeAgent) -> Callable[[Message], Message | None]:
        def handle(message: Message) -> Message | None:
            answer = agent.handle(message)
            if answer is not None:
                sent.append((site, type(answer).__name__))
            return answer

        return handle

    connectors = {
        name: MemoryConnector(
            name, handler=spying(name, NodeAgent(name, preloaded=in_memory(t, name)))
        )
        for name, t in sites.items()
    }
    outcome = asyncio.run(Coordinator(app, params, connectors, min_count=1, secure=True).run())
    return outcome.done.result, sent


def test_secure_run_end_to_end_keeps_the_certified_digits_and_sends_no_reply_in_the_clear() -> None:
    sites = _sites(dataset("longley"), 3)
    result, sent = _run_secure_spied("linear-regression", LONGLEY, sites)
    np.testing.assert_allclose(
        list(result["coefficients"].values()), CERTIFIED_COEFFICIENTS, rtol=1e-14
    )
    np.testing.assert_allclose(
        list(result["std_errors"].values()), CERTIFIED_STD_ERRORS, rtol=1e-14
    )
    kinds = {kind for _, kind in sent}
    assert "MaskedSum" in kinds  # each site's cross-products left it masked ...
    assert "Reply" not in kinds  # ... and never as a plain reply


@pytest.mark.parametrize(
    "app, params, name",
    [
        ("glm", {"target": "mdvis", "family": "poisson"}, "randhie"),
        ("glm", {"target": "GRADE", "family": "binomial"}, "spector"),
        ("logistic-regression", {"target": "GRADE"}, "spector"),
    ],
)
def test_secure_simulation_equals_the_plaintext_one(
    app: str, params: dict[str, Any], name: str
) -> None:
    from fedflow.runtime.simulate import simulate

    sites = _sites(dataset(name), 3)
    secure = simulate(app, params, sites, min_count=1, secure=True)
    plain = simulate(app, params, sites, min_count=1)
    assert secure.rounds == plain.rounds
    for key in ("coefficients", "std_errors"):
        for coef, value in plain.result[key].items():
            assert secure.result[key][coef] == pytest.approx(value, rel=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("app", REGRESSION_APPS)
def test_the_example_study_runs_securely_on_local_sites(app: str, tmp_path: Any) -> None:
    # the real thing: site processes reading CSV files batch by batch (streaming), the secure
    # protocol on the wire, --compare against statsmodels, and the trace of what arrived
    import json
    import shutil
    from pathlib import Path

    import fedflow

    example = Path(__file__).parents[2] / "examples" / app
    shutil.copytree(example, tmp_path / app)
    run = fedflow.run(
        tmp_path / app / "study.toml",
        secure=True,
        compare=True,
        trace=True,
        out=tmp_path / "run",
        progress=False,
    )
    assert run.matches is True
    trace = [json.loads(line) for line in (run.dir / "trace.jsonl").read_text().splitlines()]
    phases = {m["phase"] for m in trace if m["phase"] is not None}
    assert phases and all(get_app(app).check_phase(p).summed for p in phases)
    kinds = {m["type"] for m in trace}
    assert "masked_sum" in kinds and "reply" not in kinds  # no site's own reply reached it
