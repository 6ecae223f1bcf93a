"""Fidelity cases of the survival apps: kaplan-meier (lifelines) and cox (lifelines, statsmodels)."""

from tests.apps.fidelity import Case

CASES = [
    Case("kaplan-meier", "waltons", {"duration": "T", "event": "E"}),
    Case("kaplan-meier", "waltons", {"duration": "T", "event": "E", "group": "group"}, min_count=1),
    Case("kaplan-meier", "rossi", {"duration": "week", "event": "arrest", "group": "fin"}),
    Case("kaplan-meier", "gbsg2", {"duration": "time", "event": "cens", "group": "horTh"}),
    Case(
        "kaplan-meier",
        "gbsg2",
        {"duration": "time", "event": "cens", "group": "tgrade"},
        min_count=1,
    ),
    Case(
        "kaplan-meier",
        "lung_complete",
        {"duration": "time", "event": "status", "group": "ph.ecog", "alpha": 0.1},
        min_count=1,
    ),
]

_ROSSI = {"duration": "week", "event": "arrest"}
_KIDNEY = {"duration": "time", "event": "death"}
_GBSG2 = ["age", "tsize", "pnodes", "progrec", "estrec"]

CASES += [
    Case("cox", "rossi", _ROSSI),
    Case("cox", "rossi", {**_ROSSI, "ties": "breslow"}),
    Case("cox", "kidney_transplant", _KIDNEY),
    Case("cox", "kidney_transplant", {**_KIDNEY, "ties": "breslow"}),
    Case("cox", "larynx", {"duration": "time", "event": "death"}, min_count=1),
    Case("cox", "gbsg2", {"duration": "time", "event": "cens", "features": _GBSG2}),
    Case(
        "cox",
        "lung_complete",
        {"duration": "time", "event": "status", "features": ["age", "sex", "ph.ecog", "wt.loss"]},
        min_count=1,
    ),
]
