"""Federated training's I/O half: plans (the study's model code), torch at the sites and the
coordinator, weights as safetensors, checkpoints in the run directory.

The app is ``fedflow.training.app:Train`` (``app = "train"``); its sans-I/O logic (parameters,
payloads, strategies, sampling) is ``fedflow.apps.train``. torch is imported only when a plan runs:
the rest of fedflow works without it.
"""

from __future__ import annotations

import importlib.util

from fedflow.errors import AppError

__all__ = ["TORCH_INSTALL", "require_torch"]

TORCH_INSTALL = "pip install 'fedflow-studies[torch]'  (torch 2.13 CPU and safetensors)"


def require_torch() -> None:
    """Raise AppError saying exactly what to install when torch or safetensors is missing."""
    missing = [m for m in ("torch", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        raise AppError(
            f"app 'train' needs {' and '.join(missing)}, which cannot be imported here: "
            f"{TORCH_INSTALL}"
        )
