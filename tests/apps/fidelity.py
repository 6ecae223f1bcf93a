"""The machinery of the fidelity suite: real public datasets, split into sites, run federated,
compared number by number with the app's centralized twin.

Each app registers its cases in ``tests/apps/cases/<app>.py`` as ``CASES = [Case(...), ...]``;
``test_fidelity.py`` runs every case on 3 and 7 sites, IID and unbalanced (one site ten times
larger than another), with every payload passed through the real wire codec.
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
from fedflow.apps.simulate import Simulation, simulate
from fedflow.results.compare import Comparison, compare_results
from fedflow.wire import MessageCodec, Reply

SPLITS = [(3, "iid"), (3, "unbalanced"), (7, "iid"), (7, "unbalanced")]


@dataclass(frozen=True)
class Case:
    """One app on one dataset with given parameters."""

    app: str
    dataset: str
    params: dict[str, Any] = field(default_factory=dict)
    min_count: int = 5
    seed: int | None = 0

    @property
    def id(self) -> str:
        extra = ",".join(
            f"{k}={v}" for k, v in self.params.items() if k not in ("target", "features")
        )
        return f"{self.app}-{self.dataset}" + (f"-{extra}" if extra else "")


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


_codec = MessageCodec()


def wire_relay(payload: dict[str, Any]) -> dict[str, Any]:
    """Pass a payload through the real codec, as it would travel between processes."""
    message = _codec.decode(_codec.encode(Reply(round=0, payload=payload)))
    assert isinstance(message, Reply)
    return message.payload


def run_case(case: Case, n_sites: int, mode: str) -> tuple[Simulation, dict[str, Any], Comparison]:
    """Run ``case`` federated over a split and centralized on the pooled frame; compare them."""
    app = get_app(case.app)
    frame = dataset(case.dataset)
    parts = split(frame, n_sites, mode)
    sites = {f"site-{i + 1}": Table.from_pandas(p) for i, p in enumerate(parts)}
    sim = simulate(
        app, case.params, sites, seed=case.seed, min_count=case.min_count, relay=wire_relay
    )
    needed = list(app.columns(sim.params))
    pooled = pd.concat(parts, ignore_index=True)
    pooled = pooled[needed] if needed else pooled
    central = app.centralized(pooled, sim.params)
    comparison = compare_results(
        app.comparable(sim.result),
        app.comparable(central),
        rtol=app.tolerance,
        atol=app.absolute_tolerance,
    )
    return sim, central, comparison
