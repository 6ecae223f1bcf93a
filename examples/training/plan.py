"""A training plan for fedflow's ``app = "train"``: a small MLP on scikit-learn's 8×8 digits.

fedflow calls ``model()`` (with the study's seed set), ``loss(output, target)`` and
``metrics(output, target)``; ``optimizer`` is optional (default: plain SGD at the study's lr).
``classification = True`` makes the target column arrive as class numbers (int64).
"""

import torch

classification = True


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(64, 32)
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x / 16.0)))  # pixels are 0..16


def model() -> torch.nn.Module:
    return MLP()


def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target)


def optimizer(parameters, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9)


def metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"accuracy": (output.argmax(dim=1) == target).double().mean().item()}
