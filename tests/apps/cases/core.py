"""Fidelity cases of the core apps: stats, linear and logistic regression."""

from fedflow.results.compare import Tolerance
from tests.apps.fidelity import EXACT, Case

_BC = ["mean_radius", "mean_texture", "mean_smoothness", "mean_concavity"]

# linear and logistic regression: every compared key to rounding, counts exactly. Largest
# relative differences measured (3 and 7 sites, IID and unbalanced): linear 2.9e-11 (longley
# coefficients), logistic 1.3e-11 (a p-value of 1e-8 on breast_cancer), 2e-13 elsewhere.
_REGRESSION = {"": EXACT, "n_obs": Tolerance(0.0), "df_resid": Tolerance(0.0)}

CASES = [
    Case("stats", "diabetes"),
    Case("stats", "wine"),
    Case("stats", "longley", min_count=1),
    Case("linear-regression", "diabetes", {"target": "target"}, tolerances=_REGRESSION),
    Case("linear-regression", "longley", {"target": "TOTEMP"}, min_count=1, tolerances=_REGRESSION),
    Case(
        "linear-regression",
        "diabetes",
        {"target": "target", "intercept": False},
        tolerances=_REGRESSION,
    ),
    Case(
        "logistic-regression",
        "breast_cancer",
        {"target": "target", "features": _BC},
        tolerances=_REGRESSION,
    ),
    Case(
        "logistic-regression", "spector", {"target": "GRADE"}, min_count=1, tolerances=_REGRESSION
    ),
]
