"""Fidelity cases of random-forest: out-of-bag accuracy / AUC / R² against scikit-learn's forest.

The reference is scikit-learn's ``RandomForestClassifier`` / ``RandomForestRegressor`` with
``oob_score = True`` (its own out-of-bag estimates: ``oob_score_``, ``oob_decision_function_``,
``oob_prediction_``), resolving task, features and ``max_features`` itself. The federated forest is
a different forest, so its out-of-bag quality agrees within 0.1 absolute (no relative part; worst
measured 0.080, docs/apps/random-forest.md); what must be identical — task, features, classes,
n_trees, n_obs — is compared exactly.
"""

from fedflow.results.compare import Tolerance
from tests.apps.fidelity import EXACT, Case

OOB = Tolerance(0.0, 0.1)
FOREST_TOLERANCES = {"": EXACT, "oob_accuracy": OOB, "oob_auc": OOB, "oob_r2": OOB}


def _forest(dataset: str, params: dict[str, object]) -> Case:
    return Case("random-forest", dataset, params, tolerances=FOREST_TOLERANCES)


CASES = [
    _forest("breast_cancer", {"target": "target", "n_estimators": 30}),
    _forest("wine", {"target": "target", "n_estimators": 30}),
    _forest("iris", {"target": "target", "n_estimators": 30, "max_depth": 4}),
    _forest("diabetes", {"target": "target", "n_estimators": 30}),
    _forest("diabetes", {"target": "target", "n_estimators": 30, "max_features": 0.33}),
]
