"""The federated app library: one module per algorithm, each with its centralized twin.

``get_app(name)`` returns an app by the name users type in ``app = "..."`` or, for a plug-in, by
``"package.module:Class"``. Built-in apps are imported on first use, so a site only loads the
algorithm it runs.
"""

from __future__ import annotations

import difflib
import importlib

from fedflow.apps.base import (
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    SiteInfo,
    Step,
    Table,
    check_min_count,
    check_unique,
    named,
    numeric_columns,
)
from fedflow.errors import AppError

__all__ = [
    "BUILTIN_APPS",
    "App",
    "ColumnKind",
    "Continue",
    "CoordinatorContext",
    "Done",
    "Empty",
    "Params",
    "Payload",
    "Phase",
    "SiteContext",
    "SiteInfo",
    "Step",
    "Table",
    "available_apps",
    "check_min_count",
    "check_unique",
    "get_app",
    "named",
    "numeric_columns",
]

BUILTIN_APPS: dict[str, str] = {
    "stats": "fedflow.apps.stats:Stats",
    "linear-regression": "fedflow.apps.linear:LinearRegression",
    "logistic-regression": "fedflow.apps.logistic:LogisticRegression",
    "crosstab": "fedflow.apps.crosstab:Crosstab",
    "t-test": "fedflow.apps.ttest:TTest",
    "glm": "fedflow.apps.glm:GLM",
    "pca": "fedflow.apps.pca:PCA",
    "kmeans": "fedflow.apps.kmeans:KMeans",
    "kaplan-meier": "fedflow.apps.kaplan_meier:KaplanMeier",
    "cox": "fedflow.apps.cox:Cox",
    "random-forest": "fedflow.apps.forest:RandomForest",
    "train": "fedflow.training.app:Train",  # torch at work: lives outside the sans-I/O layer
}


def available_apps() -> list[str]:
    """Return the names of the built-in apps, sorted."""
    return sorted(BUILTIN_APPS)


def get_app(name: str) -> App:  # type: ignore[type-arg]
    """Return an instance of the app called ``name`` (built-in name or ``package.module:Class``).

    Raises AppError when no such app exists, naming the closest built-in name.
    """
    target = BUILTIN_APPS.get(name)
    if target is None:
        if ":" not in name:
            close = difflib.get_close_matches(name, BUILTIN_APPS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AppError(
                f"unknown app '{name}'{hint}; built-in apps: {', '.join(available_apps())}, "
                "or give 'package.module:Class'"
            )
        target = name
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise AppError(f"app '{name}' cannot be loaded: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise AppError(f"app '{name}': {target} is not a fedflow App subclass")
    return cls()
