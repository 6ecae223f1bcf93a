"""Plans and site tables shared by the training tests (tiny: the suite must stay fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedflow.apps.base import Table

MLP_PLAN = """
import torch

classification = True


def model():
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(8, 3)
    )


def loss(output, target):
    return torch.nn.functional.cross_entropy(output, target)


def metrics(output, target):
    return {"accuracy": (output.argmax(1) == target).double().mean().item()}
"""

LINEAR_PLAN = """
import torch


def model():
    layer = torch.nn.Linear({p}, 1, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer


def loss(output, target):
    return torch.mean((output.squeeze(-1) - target) ** 2)
"""


def write_plan(folder: Path, text: str, name: str = "plan.py") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def blobs(sizes: list[int], seed: int = 0) -> dict[str, Table]:
    """Three Gaussian classes in four features, split over sites of the given sizes."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + y[:, None] * np.array([1.5, -1.0, 0.5, 0.0])
    tables, at = {}, 0
    for i, size in enumerate(sizes):
        cols = {f"x{j}": x[at : at + size, j] for j in range(4)}
        cols["label"] = y[at : at + size].astype(np.int64)
        tables[f"site{i}"] = Table(cols)
        at += size
    return tables


def mlp_params(plan: Path, **extra: object) -> dict[str, object]:
    return {
        "plan": str(plan),
        "target": "label",
        "rounds": 3,
        "lr": 0.1,
        "batch_size": 16,
        "metric": "accuracy",
        **extra,
    }
