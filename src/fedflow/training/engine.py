"""torch at work: the model's weights as one flat array, local training and evaluation, and
the deterministic settings that make the same study and seed give the same bits.

Only the floating-point entries of a model's ``state_dict`` are federated (parameters and float
buffers such as batch-norm statistics, in ``state_dict`` order); they travel as one flat array of
the model's dtype. Integer buffers stay as the model builds them.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedflow.apps.train import TrainParams, derive_seed
from fedflow.errors import AppError
from fedflow.training import require_torch
from fedflow.training.plan import Plan

__all__ = [
    "Layout",
    "deterministic",
    "evaluate",
    "initial_weights",
    "layout_of",
    "local_train",
    "model_with",
    "ready_to_train",
    "split_rows",
    "to_tensors",
]


def deterministic() -> Any:
    """Import torch and fix what makes CPU results vary: deterministic kernels, one thread.

    ``torch.use_deterministic_algorithms(True)`` would also set Inductor's ``deterministic``
    flag, and to do so it imports ``torch._inductor.config`` and with it TorchDynamo: 1.8 s of
    CPU on this project's machines, in the coordinator and in every site that imports torch.
    ``set_deterministic_debug_mode("error")`` sets the same kernel flag without that import,
    and Inductor's flag is set the way Inductor reads it, from its environment variable when it
    has not been imported yet (a plan that calls ``torch.compile`` imports it later).
    """
    require_torch()
    import torch

    inductor: Any = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True
    else:
        os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
    torch.set_deterministic_debug_mode("error")
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return torch


def ready_to_train() -> Any:
    """:func:`deterministic`, and the import a torch optimiser makes when it is built
    (``torch._disable_dynamo`` imports TorchDynamo, 1.8 s of CPU): for a process that will
    train, done before it forks or while it waits for its sites."""
    torch = deterministic()
    importlib.import_module("torch._dynamo")
    return torch


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtype of the federated entries of a model's state_dict."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype[Any]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def named(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Return the flat weights as named arrays (for safetensors)."""
        out, at = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = int(np.prod(shape))
            out[name] = np.ascontiguousarray(flat[at : at + n].reshape(shape))
            at += n
        return out

    def flat(self, named: Mapping[str, np.ndarray]) -> np.ndarray:
        """Return named arrays as the flat weights; AppError for a missing or misshapen one."""
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            if name not in named:
                raise AppError(f"weights lack '{name}'")
            value = np.asarray(named[name])
            if tuple(value.shape) != shape:
                raise AppError(f"weights '{name}' have shape {value.shape}, the model {shape}")
            parts.append(value.astype(self.dtype, copy=False).ravel())
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)


def layout_of(model: Any) -> Layout:
    """Return the layout of ``model``'s floating-point state (AppError for a non-torch model)."""
    torch = deterministic()
    if not isinstance(model, torch.nn.Module):
        raise AppError(
            f"the plan's model() returned {type(model).__name__}; app 'train' trains a "
            "torch.nn.Module"
        )
    entries = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not entries:
        raise AppError("the plan's model has no floating-point weights")
    dtypes = {str(v.dtype) for _, v in entries}
    dtype = np.result_type(*[v.detach().numpy().dtype for _, v in entries])
    if len(dtypes) > 1:
        dtype = np.dtype(np.float64)
    return Layout(
        tuple(k for k, _ in entries), tuple(tuple(v.shape) for _, v in entries), np.dtype(dtype)
    )


def _flatten(model: Any, layout: Layout) -> np.ndarray:
    state = model.state_dict()
    return layout.flat({k: state[k].detach().cpu().numpy() for k in layout.names})


def _load(model: Any, layout: Layout, flat: np.ndarray) -> None:
    import torch

    if flat.shape != (layout.size,):
        raise AppError(f"weights of {flat.shape} values; the model has {layout.size}")
    state = model.state_dict()
    with torch.no_grad():
        for name, value in layout.named(np.asarray(flat)).items():
            state[name].copy_(torch.from_numpy(value))


def initial_weights(plan: Plan, seed: int | None) -> tuple[np.ndarray, Layout]:
    """Build the plan's model with the study's seed; return its flat weights and layout."""
    torch = deterministic()
    torch.manual_seed(derive_seed(seed, "init"))
    model = plan.model()
    layout = layout_of(model)
    return _flatten(model, layout), layout


def model_with(plan: Plan, flat: np.ndarray, seed: int | None = None) -> tuple[Any, Layout]:
    """Return the plan's model holding the flat weights ``flat``."""
    torch = deterministic()
    torch.manual_seed(derive_seed(seed, "init"))
    model = plan.model()
    layout = layout_of(model)
    _load(model, layout, np.asarray(flat, dtype=layout.dtype))
    return model, layout


def split_rows(n: int, validation: float, seed: int | None, site: str) -> tuple[np.ndarray, ...]:
    """Return (training rows, held-out rows) of a site's ``n`` rows, seeded by study and site."""
    held = int(round(validation * n))
    order = np.random.default_rng(derive_seed(seed, "validation", site)).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def to_tensors(
    x: np.ndarray, y: np.ndarray, dtype: np.dtype[Any], classes: bool
) -> tuple[Any, Any]:
    """Return the features as a tensor of the model's dtype, the target as int64 class numbers
    (``classes``: the plan sets ``classification = True``) or the model's dtype."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64 if classes else dtype))
    return xt, yt


def evaluate(plan: Plan, model: Any, x: Any, y: Any) -> dict[str, float]:
    """Return ``loss`` and the plan's metrics of ``model`` on (x, y), in eval mode."""
    import torch

    if len(y) == 0:
        return {}
    model.eval()
    with torch.no_grad():
        out = model(x)
        metrics = {"loss": float(plan.loss(out, y))}
        metrics.update(plan.metrics(out, y))
    return metrics


def local_train(
    plan: Plan,
    model: Any,
    layout: Layout,
    x: Any,
    y: Any,
    params: TrainParams,
    seed: int,
    correction: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int]:
    """Train ``model`` (holding the global weights) on (x, y) for ``local_epochs`` epochs of
    seeded minibatches; FedProx adds μ/2·‖w − w_global‖²; SCAFFOLD adds ``correction`` (flat,
    over the federated entries) to every parameter's gradient. Returns the flat updated weights,
    the mean training loss of the last epoch (weighted by batch rows) and the optimizer steps."""
    import torch

    torch.manual_seed(seed)  # dropout and anything else the model draws
    generator = torch.Generator().manual_seed(seed)
    model.train()
    optimizer = plan.optimizer(model.parameters(), params.lr)
    anchor = [p.detach().clone() for p in model.parameters()] if params.mu > 0 else []
    n = len(y)
    batch = n if params.batch_size == 0 else params.batch_size
    last = 0.0
    steps = 0
    shift = _per_parameter(model, layout, correction) if correction is not None else []
    for _ in range(params.local_epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            loss = plan.loss(model(x[rows]), y[rows])
            total += float(loss.detach()) * len(rows)
            if anchor:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * params.mu * prox
            optimizer.zero_grad()
            loss.backward()
            for p, c in shift:
                if p.grad is not None:
                    p.grad += c
            optimizer.step()
            steps += 1
        last = total / n
    return _flatten(model, layout), last, steps


def _per_parameter(model: Any, layout: Layout, flat: np.ndarray) -> list[tuple[Any, Any]]:
    """Return (parameter, its slice of ``flat`` as a tensor) for every trainable parameter."""
    import torch

    named = layout.named(np.asarray(flat, dtype=layout.dtype))
    return [
        (p, torch.from_numpy(named[name]))
        for name, p in model.named_parameters()
        if p.requires_grad and name in named
    ]
