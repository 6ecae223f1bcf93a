"""linear-regression against the NIST StRD certified values for the Longley data."""

from __future__ import annotations

import numpy as np
import pytest

from fedflow.apps.base import Table
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split

# NIST StRD, Longley (https://www.itl.nist.gov/div898/strd/lls/data/Longley.shtml), certified values
CERTIFIED_COEFFICIENTS = [
    -3482258.63459582,
    15.0618722713733,
    -0.358191792925910e-01,
    -2.02022980381683,
    -1.03322686717359,
    -0.511041056535807e-01,
    1829.15146461355,
]
CERTIFIED_STD_ERRORS = [
    890420.383607373,
    84.9149257747669,
    0.334910077722432e-01,
    0.488399681651699,
    0.214274163161675,
    0.226073200069370,
    455.478499142212,
]
CERTIFIED_R2 = 0.995479004577296
CERTIFIED_RESIDUAL_SD = 304.854073561965


@pytest.mark.parametrize("n_sites", [1, 3, 7])
def test_longley_matches_the_certified_values(n_sites: int) -> None:
    frame = dataset("longley")
    sites = {f"s{i}": Table.from_pandas(p) for i, p in enumerate(split(frame, n_sites, "iid"))}
    params = {"target": "TOTEMP", "features": ["GNPDEFL", "GNP", "UNEMP", "ARMED", "POP", "YEAR"]}
    result = simulate("linear-regression", params, sites, min_count=1).result
    coef = np.array(list(result["coefficients"].values()))
    se = np.array(list(result["std_errors"].values()))
    np.testing.assert_allclose(coef, CERTIFIED_COEFFICIENTS, rtol=1e-9)
    np.testing.assert_allclose(se, CERTIFIED_STD_ERRORS, rtol=1e-9)
    assert result["r_squared"] == pytest.approx(CERTIFIED_R2, rel=1e-12)
    assert result["sigma"] == pytest.approx(CERTIFIED_RESIDUAL_SD, rel=1e-10)
