"""Training plans: the study's Python file that defines the model.

A plan defines ``model()`` (a ``torch.nn.Module``), ``loss(output, target)`` (a scalar tensor,
the mean over the rows given), and optionally ``optimizer(parameters, lr)`` (default: SGD) and
``metrics(output, target)`` (a dict of numbers, each a mean over the rows given). A plan runs only
from a file on the machine that runs it, and only when the file's sha256 is the one the study
recorded: at a defended site, the site's own approved copy (``fedflow site approve plan.py``).
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedflow.errors import AppError, PolicyError

__all__ = ["Plan", "load_plan", "plan_hash", "read_plan"]


def plan_hash(source: bytes) -> str:
    """Return ``sha256:<hex>`` of a plan's bytes (as site approvals record it)."""
    return "sha256:" + hashlib.sha256(source).hexdigest()


def read_plan(path: Path) -> bytes:
    """Return the bytes of the plan file; AppError naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise AppError(f"plan {path} does not exist") from None
    except OSError as exc:
        raise AppError(f"plan {path} cannot be read: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Plan:
    """A loaded plan: its functions and the hash of the source they came from."""

    sha256: str
    path: str
    module: types.ModuleType
    source: bytes

    def model(self) -> Any:
        return self.module.model()

    def loss(self, output: Any, target: Any) -> Any:
        return self.module.loss(output, target)

    def optimizer(self, parameters: Any, lr: float) -> Any:
        make = getattr(self.module, "optimizer", None)
        if make is None:
            import torch

            return torch.optim.SGD(parameters, lr=lr)
        return make(parameters, lr)

    def metrics(self, output: Any, target: Any) -> dict[str, float]:
        make = getattr(self.module, "metrics", None)
        if make is None:
            return {}
        values = make(output, target)
        if not isinstance(values, dict):
            raise AppError(
                f"plan {self.path}: metrics() returned {type(values).__name__}, not dict"
            )
        out = {}
        for k, v in values.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                raise AppError(f"plan {self.path}: metric '{k}' is not a number") from None
        return out


def load_plan(path: Path, expected: str | None = None) -> Plan:
    """Run the plan file at ``path`` (its bytes as read, once) and return it. With ``expected``
    (``sha256:<hex>``), refuse a file whose bytes have another hash (PolicyError). A plan that
    lacks ``model`` or ``loss`` is refused with AppError naming the file."""
    source = read_plan(path)
    digest = plan_hash(source)
    if expected is not None and digest != expected:
        raise PolicyError(f"plan {path} has hash {digest}, not the study's {expected}")
    module = types.ModuleType(f"fedflow_plan_{digest[7:23]}")
    module.__file__ = str(path)
    try:
        code = compile(source, str(path), "exec")
        # the plan runs only where the site lets it: a defended site's own approved copy, or
        # the study owner's plan on an owned site (their machine: node/agent.py)
        exec(code, module.__dict__)  # noqa: S102 - a local file whose hash was checked
    except Exception as exc:
        raise AppError(f"plan {path} failed to load: {type(exc).__name__}: {exc}") from None
    for name in ("model", "loss"):
        if not callable(getattr(module, name, None)):
            raise AppError(f"plan {path} defines no function {name}()")
    return Plan(digest, str(path), module, source)
