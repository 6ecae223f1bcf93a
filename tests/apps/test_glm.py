"""glm: merge functions, parameter checks, target checks, min_count, agreement with the other
regression apps and with statsmodels beyond the fidelity cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps._merge_learning import r_factor, stack_factors
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.glm import GLM, GLMParams, StartTerms
from fedflow.apps.linear import ols_from_r
from fedflow.errors import AppError, DataError, RemoteProtocolError
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.apps.wire_spy import run_spied


def _sites(frame: pd.DataFrame, n: int = 3, mode: str = "iid") -> dict[str, Table]:
    return {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, n, mode))}


def _poisson_frame(seed: int = 1, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    y = rng.poisson(np.exp(0.3 + 0.5 * x1 - 0.8 * x2))
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y})


# -- merge functions ------------------------------------------------------------------------------
def test_stacked_factors_carry_the_pooled_cross_products() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 4)) for n in (3, 50, 17)]  # one part shorter than wide
    r = stack_factors([r_factor(p) for p in parts])
    pooled = np.vstack(parts)
    np.testing.assert_allclose(r.T @ r, pooled.T @ pooled, rtol=1e-12, atol=1e-12)


def test_the_shared_solver_is_least_squares() -> None:
    # glm solves every weighted least-squares step with linear-regression's ols_from_r
    rng = np.random.default_rng(1)
    a = rng.normal(size=(60, 3))
    b = a @ [1.0, -2.0, 0.5] + rng.normal(size=60)
    coef, unscaled, rss = ols_from_r(r_factor(np.column_stack([a, b])), ["a", "b", "c"])
    expected, res, *_ = np.linalg.lstsq(a, b, rcond=None)
    np.testing.assert_allclose(coef, expected, rtol=1e-12)
    np.testing.assert_allclose(unscaled, np.linalg.inv(a.T @ a), rtol=1e-10)
    assert rss == pytest.approx(float(res[0]), rel=1e-12)


def test_the_shared_solver_refuses_collinear_columns_by_name() -> None:
    a = np.column_stack([np.arange(10.0), 2 * np.arange(10.0), np.ones(10)])
    with pytest.raises(AppError, match="rank-deficient.*: b"):
        ols_from_r(r_factor(np.column_stack([a, np.ones(10)])), ["a", "b", "c"])


# -- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, message",
    [
        ({"target": "y", "family": "gamma"}, "family"),
        ({"target": "y", "tol": 0}, "tol must be positive"),
        ({"target": "y", "max_iter": 0}, "max_iter"),
        ({"target": "y", "famly": "poisson"}, "did you mean 'family'"),
        ({"target": "y", "features": ["y"]}, "also listed in features"),
    ],
)
def test_bad_params_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match=message):
        get_app("glm").parse_params(raw)


def test_features_default_to_every_other_numeric_column() -> None:
    sim = simulate("glm", {"target": "y", "family": "poisson"}, _sites(_poisson_frame()))
    assert sim.params.features == ["x1", "x2"]
    assert list(sim.result["coefficients"]) == ["intercept", "x1", "x2"]
    assert sim.result["converged"] is True


# -- the site checks its target -------------------------------------------------------------------
def test_poisson_refuses_negative_counts_naming_the_column() -> None:
    frame = _poisson_frame()
    frame.loc[300, "y"] = -1
    sites = {"a": Table.from_pandas(frame[:200]), "b": Table.from_pandas(frame[200:])}
    with pytest.raises(DataError, match="column 'y'.*non-negative") as info:
        simulate("glm", {"target": "y", "family": "poisson"}, sites)
    assert info.value.column == "y"
    assert info.value.site == "b"


def test_poisson_refuses_fractional_counts() -> None:
    frame = _poisson_frame().astype({"y": float})
    frame.loc[200, "y"] = 1.5
    with pytest.raises(DataError, match="whole numbers"):
        simulate("glm", {"target": "y", "family": "poisson"}, _sites(frame))


def test_binomial_refuses_a_target_other_than_0_1() -> None:
    app = get_app("glm")
    params = app.parse_params({"target": "y", "features": ["x1"], "family": "binomial"})
    table = Table({"y": np.array([0.0, 1.0, 2.0, 1.0, 0.0, 1.0]), "x1": np.arange(6.0)})
    with pytest.raises(DataError, match="only 0 and 1"):
        app.local(table, params, "start", Empty(), SiteContext(site="a", min_count=1))


def test_a_site_below_min_count_refuses() -> None:
    app = get_app("glm")
    params = app.parse_params({"target": "y", "features": ["x1"], "family": "poisson"})
    table = Table({"y": np.array([0, 1, 2, 1]), "x1": np.arange(4.0)})
    with pytest.raises(DataError, match="min_count"):
        app.local(table, params, "start", Empty(), SiteContext(site="a", min_count=5))


def test_replies_hold_aggregates_only() -> None:
    frame = _poisson_frame(n=300)
    spied = run_spied("glm", {"target": "y", "family": "poisson"}, _sites(frame))
    start, irls = spied.replies("start"), spied.replies("irls")
    assert len(start) == 3 and len(irls) == 3 * spied.result["iterations"]
    for payload in start + irls:
        for value in payload.values():
            # a 4x4 factor at most (or the two poisson sums); never a column of 100 rows
            assert np.size(value) <= 16  # type: ignore[arg-type]
    assert set(start[0]) == {"factor", "deviance", "loglik", "n", "y_mean", "y_m2", "poisson"}
    assert set(start[0]["poisson"]) == {"ylogy", "log_factorials"}
    assert set(irls[0]) == {"factor", "deviance", "loglik"}


def test_only_poisson_sites_send_the_poisson_sums() -> None:
    spied = run_spied("glm", {"target": "y", "family": "gaussian"}, _sites(_poisson_frame()))
    assert all(reply["poisson"] is None for reply in spied.replies("start"))


def test_a_poisson_reply_without_its_sums_is_blamed_on_the_site(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import msgspec

    honest = GLM.local_start

    def forgetful(
        self: GLM, data: Table, params: GLMParams, request: Empty, ctx: SiteContext
    ) -> StartTerms:
        reply = honest(self, data, params, request, ctx)
        return msgspec.structs.replace(reply, poisson=None) if ctx.site == "s1" else reply

    monkeypatch.setattr(GLM, "local_start", forgetful)
    with pytest.raises(RemoteProtocolError, match="poisson") as info:
        simulate("glm", {"target": "y", "family": "poisson"}, _sites(_poisson_frame()))
    assert info.value.site == "s1"


def test_fewer_rows_than_coefficients_is_an_app_error() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(10, 12)), columns=[f"x{i}" for i in range(12)])
    frame["y"] = rng.poisson(2.0, size=10)
    with pytest.raises(AppError, match="10 observations for 13 coefficients"):
        simulate("glm", {"target": "y", "family": "poisson"}, _sites(frame, 2))


# -- statistics -----------------------------------------------------------------------------------
def test_collinear_features_are_an_app_error() -> None:
    frame = _poisson_frame()
    frame["x3"] = 2 * frame["x1"]
    with pytest.raises(AppError, match="rank-deficient"):
        simulate("glm", {"target": "y", "family": "poisson"}, _sites(frame))


def test_gaussian_equals_linear_regression_with_z_statistics() -> None:
    frame = dataset("diabetes")
    sites = _sites(frame)
    glm = simulate("glm", {"target": "target"}, sites).result
    ols = simulate("linear-regression", {"target": "target"}, sites).result
    for key in ("coefficients", "std_errors"):
        for name, value in ols[key].items():
            assert glm[key][name] == pytest.approx(value, rel=1e-10)
    assert glm["z_values"]["bmi"] == pytest.approx(ols["t_values"]["bmi"], rel=1e-10)
    assert glm["scale"] == pytest.approx(ols["sigma"] ** 2, rel=1e-10)
    assert glm["iterations"] == 1


def test_binomial_equals_logistic_regression() -> None:
    frame = dataset("spector")
    sites = _sites(frame)
    glm = simulate("glm", {"target": "GRADE", "family": "binomial"}, sites, min_count=1).result
    logit = simulate("logistic-regression", {"target": "GRADE"}, sites, min_count=1).result
    for name, value in logit["coefficients"].items():
        assert glm["coefficients"][name] == pytest.approx(value, rel=1e-8)
    assert glm["loglik"] == pytest.approx(logit["loglik"], rel=1e-10)
    assert glm["deviance"] == pytest.approx(-2 * logit["loglik"], rel=1e-10)


def test_poisson_matches_statsmodels_fit_statistics() -> None:
    import statsmodels.api as sm

    frame = _poisson_frame(seed=5, n=500)
    result = simulate("glm", {"target": "y", "family": "poisson"}, _sites(frame, 7, "unbalanced"))
    fit = sm.GLM(frame["y"], sm.add_constant(frame[["x1", "x2"]]), family=sm.families.Poisson())
    ref = fit.fit(tol=1e-13)
    r = result.result
    assert r["aic"] == pytest.approx(ref.aic, rel=1e-10)
    assert r["null_deviance"] == pytest.approx(ref.null_deviance, rel=1e-10)
    assert r["loglik"] == pytest.approx(ref.llf, rel=1e-10)
    assert r["n_obs"] == 500 and r["scale"] == 1.0


def test_not_converging_within_max_iter_is_reported() -> None:
    sim = simulate(
        "glm", {"target": "y", "family": "poisson", "max_iter": 1}, _sites(_poisson_frame())
    )
    assert sim.result["converged"] is False
    assert sim.result["iterations"] == 1
    assert any("did not converge" in note for note in sim.notes)


def test_binomial_with_one_class_only_is_an_app_error() -> None:
    frame = pd.DataFrame({"x1": np.linspace(0, 1, 30), "y": np.zeros(30, dtype=int)})
    with pytest.raises(AppError, match="'y' holds one class only"):
        simulate("glm", {"target": "y", "family": "binomial"}, _sites(frame))


def test_poisson_with_zero_counts_only_is_an_app_error() -> None:
    frame = pd.DataFrame({"x1": np.linspace(0, 1, 30), "y": np.zeros(30, dtype=int)})
    with pytest.raises(AppError, match="'y' is zero everywhere"):
        simulate("glm", {"target": "y", "family": "poisson"}, _sites(frame))


def test_a_site_with_only_zero_counts_still_fits() -> None:
    import statsmodels.api as sm

    frame = _poisson_frame(seed=2, n=300).sort_values("y", ignore_index=True)
    assert (frame["y"][:40] == 0).all()
    sites = {"zeros": Table.from_pandas(frame[:40]), "rest": Table.from_pandas(frame[40:])}
    result = simulate("glm", {"target": "y", "family": "poisson"}, sites).result
    ref = sm.GLM(frame["y"], sm.add_constant(frame[["x1", "x2"]]), family=sm.families.Poisson())
    expected = ref.fit(tol=1e-13).params
    for name, value in zip(["intercept", "x1", "x2"], expected, strict=True):
        assert result["coefficients"][name] == pytest.approx(value, rel=1e-9)


# -- the family terms at any β, not only at the fit ----------------------------------------------
@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
def test_family_terms_match_statsmodels_away_from_the_fit(family: str) -> None:
    # At a fit with an intercept some terms sum to zero (Σ(y − μ) for poisson): checking the
    # deviance and log-likelihood at an arbitrary η catches a wrong sign there.
    import math

    import statsmodels.api as sm

    from fedflow.apps.glm import family_terms

    rng = np.random.default_rng(11)
    eta = rng.normal(0.2, 0.7, size=200)
    sm_family = {
        "gaussian": sm.families.Gaussian(),
        "binomial": sm.families.Binomial(),
        "poisson": sm.families.Poisson(),
    }[family]
    mu = sm_family.link.inverse(eta)
    if family == "gaussian":
        y = mu + rng.normal(size=200)
    elif family == "binomial":
        y = (rng.uniform(size=200) < mu).astype(float)
    else:
        y = rng.poisson(mu).astype(float)
    w, z, deviance, loglik = family_terms(family, y, eta)
    assert deviance == pytest.approx(sm_family.deviance(y, mu), rel=1e-12)
    if family == "poisson":
        constant = sum(math.lgamma(v + 1.0) for v in y)
        assert loglik - constant == pytest.approx(sm_family.loglike(y, mu), rel=1e-12)
    elif family == "binomial":
        assert loglik == pytest.approx(sm_family.loglike(y, mu), rel=1e-12)
    np.testing.assert_allclose(w, sm_family.weights(mu), rtol=1e-12)
    np.testing.assert_allclose(z, eta + sm_family.link.deriv(mu) * (y - mu), rtol=1e-10)
