"""fedflow: run federated analyses across data-holding sites from one study file.

The package root stays light (the node agent imports it at every site); the Python API is
loaded on first use: ``fedflow.run``, ``fedflow.load_study``, ``fedflow.Study``.
"""

from __future__ import annotations

from typing import Any

from fedflow._version import __version__

__all__ = ["Run", "Study", "__version__", "load_study", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "Run"):
        from fedflow import api

        return getattr(api, name)
    if name in ("Study", "load_study"):
        from fedflow import study

        return getattr(study, name)
    raise AttributeError(f"module 'fedflow' has no attribute {name!r}")
