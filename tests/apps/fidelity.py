"""The machinery of the fidelity suite: real public datasets, split into sites, run federated,
compared number by number with the app's centralized twin.

Each app registers its cases in ``tests/apps/cases/<app>.py`` as ``CASES = [Case(...), ...]``;
``test_fidelity.py`` runs every case on 3 and 7 sites, IID and unbalanced (one site ten times
larger than another), through the real coordinator, round driver, wire codec and node agents
(in memory). The reference side resolves its own parameters from the pooled frame and holds its
own tolerances, so a federated default that drops a column, or a missing result key, fails.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedflow.apps import get_app
from fedflow.apps.base import Table
from fedflow.results.compare import Comparison, Tolerance, compare_results
from fedflow.runtime.simulate import Simulation, simulate

SPLITS = [(3, "iid"), (3, "unbalanced"), (7, "iid"), (7, "unbalanced")]


EXACT = Tolerance(1e-8, 1e-12)
"""The default: exact algorithms agree with their twin to rounding."""


@dataclass(frozen=True)
class Case:
    """One app on one dataset with given parameters, and how its reference is computed.

    The reference never sees the federated side's choices: ``reference_params`` (default: the
    case's ``params`` with role defaults filled by ``independent_params`` from the pooled frame)
    are resolved here, and ``tolerances`` (path prefix → Tolerance; ``""`` the default) live
    with the case. ``reference``, when given, replaces ``app.centralized`` altogether.
    """

    app: str
    dataset: str
    params: dict[str, Any] = field(default_factory=dict)
    min_count: int = 5
    seed: int | None = 0
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: {"": EXACT})
    reference_params: dict[str, Any] | None = None
    reference: Callable[[pd.DataFrame, dict[str, Any]], dict[str, Any]] | None = None

    @property
    def id(self) -> str:
        extra = ",".join(
            f"{k}={v}" for k, v in self.params.items() if k not in ("target", "features")
        )
        return f"{self.app}-{self.dataset}" + (f"-{extra}" if extra else "")


# Which parameter lists "the data's columns" by default, and which roles it leaves out.
_DEFAULT_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stats": ("columns", ()),
    "pca": ("columns", ()),
    "kmeans": ("columns", ()),
    "linear-regression": ("features", ("target",)),
    "logistic-regression": ("features", ("target",)),
    "glm": ("features", ("target", "offset", "exposure", "weights")),
    "cox": ("features", ("duration", "event")),
    "random-forest": ("features", ("target",)),
}


def independent_params(app: str, params: dict[str, Any], pooled: pd.DataFrame) -> dict[str, Any]:
    """Return ``params`` with the default column list filled from the pooled frame (written
    here, apart from the apps' own ``resolve``): every numeric column but the roles."""
    if app not in _DEFAULT_COLUMNS:
        return dict(params)
    key, roles = _DEFAULT_COLUMNS[app]
    if params.get(key) is not None:
        return dict(params)
    taken = {params[r] for r in roles if isinstance(params.get(r), str)}
    numeric = [
        str(c)
        for c in pooled.columns
        if pd.api.types.is_numeric_dtype(pooled[c]) and str(c) not in taken
    ]
    return {**params, key: numeric}


# --- datasets that ship inside installed packages --------------------------------------------
def _sklearn(name: str) -> pd.DataFrame:
    import sklearn.datasets as ds

    frame = getattr(ds, f"load_{name}")(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def _statsmodels(name: str) -> pd.DataFrame:
    import importlib

    return importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data


def _lifelines(name: str) -> pd.DataFrame:
    import lifelines.datasets as ld

    return getattr(ld, f"load_{name}")()


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "breast_cancer": lambda: _sklearn("breast_cancer"),
    "diabetes": lambda: _sklearn("diabetes"),
    "wine": lambda: _sklearn("wine"),
    "iris": lambda: _sklearn("iris"),
    "longley": lambda: _statsmodels("longley"),
    "spector": lambda: _statsmodels("spector"),
    "randhie": lambda: _statsmodels("randhie"),
    "rossi": lambda: _lifelines("rossi"),
    "waltons": lambda: _lifelines("waltons"),
    "lung": lambda: _lifelines("lung"),
    "lung_complete": lambda: _lifelines("lung").dropna().reset_index(drop=True),
    "gbsg2": lambda: _lifelines("gbsg2"),
    "larynx": lambda: _lifelines("larynx"),
    "kidney_transplant": lambda: _lifelines("kidney_transplant"),
    "scotland": lambda: _statsmodels("scotland"),
    "star98": lambda: _statsmodels("star98"),
    "fair": lambda: _statsmodels("fair"),
}


@functools.cache
def dataset(name: str) -> pd.DataFrame:
    """Return a copy-safe DataFrame of a public dataset (cached)."""
    return DATASETS[name]().reset_index(drop=True)


def split(frame: pd.DataFrame, n_sites: int, mode: str, seed: int = 7) -> list[pd.DataFrame]:
    """Split rows into ``n_sites`` parts: ``iid`` (shuffled, equal) or ``unbalanced``.

    Unbalanced: sizes proportional to 10, 1, 1+…, so the first site is ten times the second.
    """
    order = np.random.default_rng(seed).permutation(len(frame))
    if mode == "iid":
        parts = np.array_split(order, n_sites)
    else:
        weights = np.array([10.0, 1.0] + [2.0] * (n_sites - 2))
        cuts = np.floor(np.cumsum(weights / weights.sum())[:-1] * len(frame)).astype(int)
        parts = np.split(order, cuts)
    return [frame.iloc[np.sort(p)].reset_index(drop=True) for p in parts]


def run_case(case: Case, n_sites: int, mode: str) -> tuple[Simulation, dict[str, Any], Comparison]:
    """Run ``case`` federated over a split and centralized on the pooled frame; compare them."""
    app = get_app(case.app)
    frame = dataset(case.dataset)
    parts = split(frame, n_sites, mode)
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    sim = simulate(case.app, case.params, sites, seed=case.seed, min_count=case.min_count)
    pooled = pd.concat(parts, ignore_index=True)
    raw = (
        case.reference_params
        if case.reference_params is not None
        else independent_params(case.app, case.params, pooled)
    )
    if case.reference is not None:
        central = case.reference(pooled, raw)
    else:
        ref_params = app.parse_params(raw)
        needed = list(app.columns(ref_params))
        central = app.centralized(pooled[needed] if needed else pooled, ref_params)
    comparison = compare_results(
        app.comparable(sim.result), app.comparable(central), tolerances=case.tolerances
    )
    return sim, central, comparison
