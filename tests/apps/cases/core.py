"""Fidelity cases of the core apps: stats, linear and logistic regression."""

from tests.apps.fidelity import Case

_BC = ["mean_radius", "mean_texture", "mean_smoothness", "mean_concavity"]

CASES = [
    Case("stats", "diabetes"),
    Case("stats", "wine"),
    Case("stats", "longley", min_count=1),
    Case("linear-regression", "diabetes", {"target": "target"}),
    Case("linear-regression", "longley", {"target": "TOTEMP"}, min_count=1),
    Case("linear-regression", "diabetes", {"target": "target", "intercept": False}),
    Case("logistic-regression", "breast_cancer", {"target": "target", "features": _BC}),
    Case("logistic-regression", "spector", {"target": "GRADE"}, min_count=1),
]
