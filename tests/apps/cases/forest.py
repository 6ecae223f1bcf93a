"""Fidelity cases of random-forest: out-of-bag accuracy / AUC / R² against scikit-learn's forest."""

from tests.apps.fidelity import Case

CASES = [
    Case("random-forest", "breast_cancer", {"target": "target", "n_estimators": 30}),
    Case("random-forest", "wine", {"target": "target", "n_estimators": 30}),
    Case("random-forest", "iris", {"target": "target", "n_estimators": 30, "max_depth": 4}),
    Case("random-forest", "diabetes", {"target": "target", "n_estimators": 30}),
    Case(
        "random-forest",
        "diabetes",
        {"target": "target", "n_estimators": 30, "max_features": 0.33},
    ),
]
