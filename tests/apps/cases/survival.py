"""Fidelity cases of the survival apps: kaplan-meier (lifelines) and cox (lifelines, statsmodels)."""

from fedflow.results.compare import Tolerance
from tests.apps.fidelity import EXACT, Case

_COUNT = Tolerance(0.0, 0.0)

# kaplan-meier: the survival table (time 0 and every event time, one list per column, both sides
# value by value), the medians and the log-rank test to rounding; the log-rank p-value relatively
# only (waltons' is 2e-28: an absolute 1e-12 would accept any p-value there); the counts and the
# log-rank dof exactly. Largest relative differences measured (3 and 7 sites, IID and unbalanced): the tables
# and medians agree bit for bit; the log-rank p-value within 2.8e-13 (lung, 4 ECOG groups),
# 1.2e-13 (gbsg2 by grade), 6.5e-14 (waltons), 8.2e-15 (gbsg2 by hormone therapy), 0 (rossi).
KM_TOLERANCES = {
    "": EXACT,
    "logrank.p_value": Tolerance(EXACT.rtol, 0.0),
    "logrank.dof": _COUNT,
    "n_obs": _COUNT,
    "n_events": _COUNT,
}

CASES = [
    Case("kaplan-meier", "waltons", {"duration": "T", "event": "E"}, tolerances=KM_TOLERANCES),
    Case(
        "kaplan-meier",
        "waltons",
        {"duration": "T", "event": "E", "group": "group"},
        min_count=1,
        tolerances=KM_TOLERANCES,
    ),
    Case(
        "kaplan-meier",
        "rossi",
        {"duration": "week", "event": "arrest", "group": "fin"},
        tolerances=KM_TOLERANCES,
    ),
    Case(
        "kaplan-meier",
        "gbsg2",
        {"duration": "time", "event": "cens", "group": "horTh"},
        tolerances=KM_TOLERANCES,
    ),
    Case(
        "kaplan-meier",
        "gbsg2",
        {"duration": "time", "event": "cens", "group": "tgrade"},
        min_count=1,
        tolerances=KM_TOLERANCES,
    ),
    Case(
        "kaplan-meier",
        "lung_complete",
        {"duration": "time", "event": "status", "group": "ph.ecog", "alpha": 0.1},
        min_count=1,
        tolerances=KM_TOLERANCES,
    ),
]

# cox: coefficients, standard errors, hazard ratios, z and p values, interval bounds, log partial
# likelihood and concordance to 1e-8 relative against lifelines CoxPHFitter (Efron) or statsmodels
# PHReg (Breslow), p-values relatively only (gbsg2's smallest is 1.4e-11); the counts exactly. Largest relative differences measured (3 and 7 sites, IID
# and unbalanced): 1.3e-9 (gbsg2, a p-value of 1.4e-11, whose relative error is the standard
# error's times z² ≈ 45), 5.8e-11 (lung, a p-value), 7.5e-13 (kidney_transplant, Breslow),
# 5.1e-13 (kidney_transplant, Efron), 4.8e-13 (larynx), 3.9e-13 (rossi, Breslow), 1.0e-13 (rossi).
COX_TOLERANCES = {
    "": EXACT,
    "p_values": Tolerance(EXACT.rtol, 0.0),
    "n_obs": _COUNT,
    "n_events": _COUNT,
}

_ROSSI = {"duration": "week", "event": "arrest"}
_KIDNEY = {"duration": "time", "event": "death"}
_GBSG2 = ["age", "tsize", "pnodes", "progrec", "estrec"]

CASES += [
    Case("cox", "rossi", _ROSSI, tolerances=COX_TOLERANCES),
    Case("cox", "rossi", {**_ROSSI, "ties": "breslow"}, tolerances=COX_TOLERANCES),
    Case("cox", "kidney_transplant", _KIDNEY, tolerances=COX_TOLERANCES),
    Case("cox", "kidney_transplant", {**_KIDNEY, "ties": "breslow"}, tolerances=COX_TOLERANCES),
    Case(
        "cox",
        "larynx",
        {"duration": "time", "event": "death"},
        min_count=1,
        tolerances=COX_TOLERANCES,
    ),
    Case(
        "cox",
        "gbsg2",
        {"duration": "time", "event": "cens", "features": _GBSG2},
        tolerances=COX_TOLERANCES,
    ),
    Case(
        "cox",
        "lung_complete",
        {"duration": "time", "event": "status", "features": ["age", "sex", "ph.ecog", "wt.loss"]},
        min_count=1,
        tolerances=COX_TOLERANCES,
    ),
]
