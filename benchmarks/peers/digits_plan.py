"""The digits MLP: a fedflow training plan, and the model Flower's side of the benchmark trains.

benchmarks/training_vs_flower.py gives this file to fedflow as `plan = "digits_plan.py"`, and
benchmarks/peers/flower_digits.py imports it, so both frameworks train the same network with
the same loss and optimiser. Inputs are the 64 pixels of scikit-learn's 8×8 digits scaled to
[0, 1]; the target is the digit (10 classes).
"""

import torch
from torch import nn

classification = True


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def optimizer(parameters, lr: float) -> torch.optim.Optimizer:  # noqa: ANN001
    return torch.optim.SGD(parameters, lr=lr)


def metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"accuracy": float((output.argmax(dim=1) == target).double().mean())}
