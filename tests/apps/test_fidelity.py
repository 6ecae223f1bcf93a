"""Every app, on real public datasets split into 3 and 7 sites (IID and unbalanced), matches its
centralized twin (statsmodels, scikit-learn, lifelines, numpy/scipy) within the app's tolerance."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from tests.apps import cases as cases_pkg
from tests.apps.fidelity import SPLITS, Case, run_case


def _all_cases() -> list[Case]:
    found: list[Case] = []
    for info in pkgutil.iter_modules(cases_pkg.__path__):
        module = importlib.import_module(f"{cases_pkg.__name__}.{info.name}")
        found.extend(module.CASES)
    return found


CASES = _all_cases()


@pytest.mark.parametrize("n_sites,mode", SPLITS, ids=[f"{n}-{m}" for n, m in SPLITS])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_centralized_twin(case: Case, n_sites: int, mode: str) -> None:
    _, _, comparison = run_case(case, n_sites, mode)
    assert comparison.items, "nothing was compared"
    worst = sorted(comparison.mismatches, key=lambda i: -(i.rel_diff or float("inf")))[:5]
    assert comparison.status == "match", "\n".join(
        f"{i.path}: federated {i.federated!r} vs centralized {i.centralized!r} (rel {i.rel_diff})"
        for i in worst
    )


def test_every_builtin_app_has_cases() -> None:
    from fedflow.apps import BUILTIN_APPS

    covered = {c.app for c in CASES}
    # train is no exact computation: tests/training checks it (exactness proof, determinism)
    missing = sorted(set(BUILTIN_APPS) - covered - {"train"})
    assert not missing, f"apps without fidelity cases: {missing}"
    for app in covered:
        datasets = {c.dataset for c in CASES if c.app == app}
        assert len(datasets) >= 2, f"{app} is checked on fewer than two datasets: {datasets}"
