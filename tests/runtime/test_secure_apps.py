"""Every built-in app that supports ``secure = true`` gives the same result with and without it,
within the app's own tolerance, on a real dataset split into 3 sites (in memory: every message
crosses the wire codec and real node agents). The apps are found from ``App.secure`` at run time,
so an app that declares support is tested from then on."""

from __future__ import annotations

import pandas as pd
import pytest

from fedflow.apps import BUILTIN_APPS, get_app
from fedflow.apps.base import Table
from fedflow.results.compare import compare_results
from fedflow.runtime.simulate import simulate
from tests.apps.fidelity import dataset, split
from tests.apps.test_fidelity import CASES

SUPPORTING = sorted(a for a in BUILTIN_APPS if get_app(a).secure is True)
COMPARED = [a for a in SUPPORTING if a != "train"]
"""(train is not in the fidelity suite: tests/training/test_secure_training.py tests it.)"""
PREFERRED = {  # small datasets; a t-test that names its groups (secure runs need them)
    "cox": "larynx",
    "kaplan-meier": "waltons",
    "t-test": "fair",
    "crosstab": "gbsg2",
}
FIRST_CASE = {
    app: next(c for c in CASES if c.app == app and c.dataset == PREFERRED.get(app, c.dataset))
    for app in COMPARED
}


def _levels(values: pd.Series) -> list:
    return sorted({v.item() if hasattr(v, "item") else v for v in values})


def secure_params(app: str, params: dict, pooled: pd.DataFrame) -> dict:
    """What a secure study must also say: crosstab's levels (public, from the codebook)."""
    if app == "crosstab":
        return {
            **params,
            "row_levels": _levels(pooled[params["row"]]),
            "column_levels": _levels(pooled[params["column"]]),
        }
    return params


def test_some_builtin_apps_support_secure_and_the_rest_say_why() -> None:
    assert SUPPORTING
    for name in set(BUILTIN_APPS) - set(SUPPORTING):
        reason = get_app(name).secure
        assert isinstance(reason, str) and reason.strip(), name


@pytest.mark.slow
@pytest.mark.parametrize("app", COMPARED)
def test_secure_and_plaintext_agree_within_the_apps_tolerance(app: str) -> None:
    case = FIRST_CASE[app]
    frame = dataset(case.dataset)
    parts = split(frame, 3, "iid")
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    kwargs = {"seed": case.seed, "min_count": case.min_count}
    params = secure_params(app, case.params, frame)
    plain = simulate(case.app, params, sites, **kwargs)
    secure = simulate(case.app, params, sites, secure=True, **kwargs)
    # one exchange a round (two when a phase's values need a wider encoding than proposed)
    assert all(r["exchanges"] in (1, 2) for r in secure.metrics["rounds"])
    instance = get_app(app)
    comparison = compare_results(
        instance.comparable(secure.result),
        instance.comparable(plain.result),
        tolerances=case.tolerances,
    )
    worst = [i for i in comparison.items if not i.match][:5]
    assert comparison.status == "match", "\n".join(
        f"{i.path}: secure {i.federated!r} vs plaintext {i.centralized!r}" for i in worst
    )
