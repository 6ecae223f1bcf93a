"""``train``: the sans-I/O half of federated training — parameters, payloads, the server's
aggregation strategies, seeded client sampling and the bookkeeping of rounds and the best model.

The other half (the plan, torch, safetensors, checkpoints) lives in ``fedflow.training``; its
``Train`` app runs this logic at the coordinator and the plan's model at the sites. Nothing here
imports torch or touches a file.

One *exchange* of the round driver carries one training round: the coordinator sends the global
weights W_{k-1}; every site first evaluates them on its held-out rows (validate-global), then, if
it was sampled for round k, trains from them and evaluates its own updated weights
(validate-local), and returns its weights and training row count. Exchange ``rounds + 1``
only validates the last global model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from fedflow.apps.base import Params, Payload, check_unique
from fedflow.errors import AppError

__all__ = [
    "STRATEGIES",
    "RoundReply",
    "RoundTask",
    "SecureRoundReply",
    "ServerOptimizer",
    "TrainParams",
    "derive_seed",
    "is_better",
    "lower_is_better",
    "sample_sites",
    "secure_metric_names",
    "weighted_average",
    "global_record",
    "train_record",
    "weighted_metrics",
]

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold")
_LOWER = ("loss", "mse", "rmse", "mae", "error", "perplexity")


class TrainParams(Params, frozen=True):
    """The ``[params]`` of a training study (docs/training.md)."""

    plan: str
    target: str
    features: list[str] | None = None
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    """Rows per minibatch; 0 trains on all of a site's training rows at once (full batch)."""
    lr: float = 0.01
    validation: float = 0.2
    """Fraction of each site's rows held out (seeded) for validate-global and validate-local."""
    metric: str = "loss"
    better: Literal["lower", "higher"] | None = None
    """Whether a lower or higher ``metric`` is better (default: lower for loss/error names)."""
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"] = (
        "fedavg"
    )
    mu: float = 0.0
    """FedProx's proximal weight (strategy = "fedprox")."""
    server_lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    fraction: float = 1.0
    """Fraction of the sites sampled (seeded) to train each round; every site validates."""
    min_sites: int = 1
    """Quorum: a round trains on at least this many sites."""
    round_timeout: float | None = None
    """Seconds a site may take for a round; those who answered are aggregated if ≥ min_sites."""
    retries: int = 0
    """Times a failed or late site's agent is restarted and its task sent again, per round."""
    plan_sha256: str = ""
    """Filled by the coordinator from the plan file (``sha256:<hex>``); sites check it."""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")
        if self.local_epochs < 1:
            raise ValueError("local_epochs must be at least 1")
        if self.batch_size < 0:
            raise ValueError("batch_size must be 0 (full batch) or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("lr must be a positive number")
        if not 0 <= self.validation < 1:
            raise ValueError("validation must be a fraction in [0, 1)")
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        if self.min_sites < 1:
            raise ValueError("min_sites must be at least 1")
        if self.mu < 0:
            raise ValueError("mu must be 0 or more")
        if self.strategy == "fedprox" and self.mu == 0:
            raise ValueError('strategy "fedprox" needs mu > 0 (with mu = 0 it is fedavg)')
        if self.strategy != "fedprox" and self.mu != 0:
            raise ValueError(f'mu is FedProx\'s; strategy is "{self.strategy}"')
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ValueError("round_timeout must be a positive number of seconds")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if not self.server_lr > 0:
            raise ValueError("server_lr must be positive")
        if not self.plan.endswith(".py"):
            raise ValueError(f"plan '{self.plan}' must be a Python file (.py)")
        if self.features is not None:
            if self.target in self.features:
                raise ValueError(f"the target '{self.target}' is also listed in features")
            check_unique(self.features, "features")
            if not self.features:
                raise ValueError("features is empty")
        if self.validation == 0 and self.metric != "loss":
            raise ValueError("a metric other than loss needs validation > 0 (held-out rows)")


class RoundTask(Payload, frozen=True):
    """To each site: the global weights W_{k-1} (flat, the model's dtype) and whether it trains."""

    weights: np.ndarray
    train: bool
    validate: bool = True
    control: np.ndarray | None = None
    """SCAFFOLD: the server's control variate c (float64, flat)."""
    state_round: int = 0
    """SCAFFOLD: the round whose state this site starts from — the last round its control update
    went into the server's c (0: none yet, c_i = 0). The site keeps its own control c_i in its
    state folder, per round; the coordinator never holds it."""
    run: str = ""
    """SCAFFOLD: the run's key (fixed at its start, kept by resume), naming its state files."""


class RoundReply(Payload, frozen=True):
    """From each site: metrics of the global weights on its held-out rows; when it trained, its
    training rows, its updated weights, the mean training loss of its last epoch and the
    metrics of its updated weights."""

    val_rows: int
    global_metrics: dict[str, float]
    rows: int = 0
    weights: np.ndarray | None = None
    train_loss: float | None = None
    local_metrics: dict[str, float] = {}
    control_delta: np.ndarray | None = None
    """SCAFFOLD: Δc_i = c_i⁺ − c_i = −c + (W_{k-1} − y_i)/(steps·lr) (Karimireddy et al. 2020,
    option II); the site keeps c_i⁺ itself."""


class SecureRoundReply(Payload, frozen=True):
    """From each site under ``secure = true`` (phase ``secure_round``, summed): every field is
    a term of a sum over sites, so the coordinator learns only the sums. A site that did not
    train this round sends zeros (``trained`` = ``rows`` = 0); one without held-out rows (or not
    asked to validate) sends ``val_rows`` = 0 and zeros. Metric vectors follow
    ``secure_metric_names``."""

    trained: int
    """1 when the site trained this round: the sum counts the sampled sites that answered."""
    rows: int
    """Its training rows n_i (0 when it did not train)."""
    weights: np.ndarray
    """n_i · w_i in float64 (w_i: its updated weights, flat; zeros when it did not train)."""
    train_loss: float
    """n_i · its mean training loss of the last epoch."""
    val_rows: int
    """Its held-out rows m_i the global weights were evaluated on."""
    global_metrics: np.ndarray
    """m_i · each metric of the global weights on its held-out rows (float64)."""
    local_val_rows: int
    """m_i when it trained and validated its updated weights, else 0."""
    local_metrics: np.ndarray
    """m_i · each metric of its updated weights on its held-out rows (float64)."""
    control: np.ndarray
    """SCAFFOLD: n_i · Δc_i (float64; zeros when it did not train; empty for other strategies)."""


def secure_metric_names(params: TrainParams) -> list[str]:
    """The metrics a site sends under ``secure = true``: the loss and the study's ``metric``
    (the coordinator must know the names before any sum: a sum has no per-site keys)."""
    return ["loss"] if params.metric == "loss" else ["loss", params.metric]


def derive_seed(seed: int | None, *parts: object) -> int:
    """Return a 63-bit seed from the study's seed and ``parts`` (site, round, purpose):
    independent streams, the same on every machine and Python version."""
    text = "\x1f".join(str(p) for p in (seed if seed is not None else 0, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def sample_sites(
    sites: Sequence[str], fraction: float, min_sites: int, seed: int | None, round_: int
) -> list[str]:
    """Return the sites that train in ``round_``: ⌈fraction·K⌉ of them, at least ``min_sites``,
    drawn from the study's seed and the round (so a resumed run draws the same), in study order.
    Raises AppError when fewer than ``min_sites`` sites exist."""
    k = len(sites)
    if k < min_sites:
        raise AppError(f"app 'train': min_sites = {min_sites} but the study has {k} site(s)")
    m = min(k, max(min_sites, math.ceil(fraction * k - 1e-12)))
    if m == k:
        return list(sites)
    rng = np.random.default_rng(derive_seed(seed, "sample", round_))
    chosen = set(rng.choice(k, size=m, replace=False).tolist())
    return [s for i, s in enumerate(sites) if i in chosen]


def weighted_average(updates: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """Return Σ n_k·w_k / Σ n_k in float64, summed in the order given (study order)."""
    total = sum(n for n, _ in updates)
    if total <= 0:
        raise AppError("app 'train': no training rows in this round")
    acc = np.zeros(np.shape(updates[0][1]), dtype=np.float64)
    for n, w in updates:
        acc += n * np.asarray(w, dtype=np.float64)
    return acc / total


def weighted_metrics(pairs: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Return each metric averaged over sites weighted by their rows (metrics that are means over
    rows pool exactly); a metric some site lacks is left out."""
    pairs = [(n, m) for n, m in pairs if n > 0 and m]
    if not pairs:
        return {}
    names = [k for k in pairs[0][1] if all(k in m for _, m in pairs)]
    total = sum(n for n, _ in pairs)
    return {k: float(sum(n * float(m[k]) for n, m in pairs) / total) for k in names}


def lower_is_better(params: TrainParams) -> bool:
    """Whether a lower value of ``params.metric`` is better."""
    if params.better is not None:
        return params.better == "lower"
    return any(word in params.metric.lower() for word in _LOWER)


def is_better(value: float, best: float | None, lower: bool) -> bool:
    """Whether ``value`` beats ``best`` (strictly: the earliest best round is kept on ties)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if lower else value > best


class ServerOptimizer:
    """The server step from the average of the sites' weights (Reddi et al. 2021, "Adaptive
    Federated Optimization", Algorithm 2, without bias correction): fedavg, fedprox and scaffold
    take the average;
    fedadam, fedyogi and fedadagrad treat Δ = average − W as a pseudo-gradient.

    State (``m``, ``v``, float64) is part of the checkpoint."""

    def __init__(self, params: TrainParams, state: Mapping[str, np.ndarray] | None = None):
        self.params = params
        self.m = None if state is None else state.get("server_m")
        self.v = None if state is None else state.get("server_v")

    def state(self) -> dict[str, np.ndarray]:
        out = {}
        if self.m is not None:
            out["server_m"] = self.m
        if self.v is not None:
            out["server_v"] = self.v
        return out

    def step(self, weights: np.ndarray, average: np.ndarray) -> np.ndarray:
        """Return the new global weights (float64) from the current ones and the average."""
        p = self.params
        if p.strategy in ("fedavg", "fedprox", "scaffold"):
            return average
        w = np.asarray(weights, dtype=np.float64)
        delta = average - w
        if self.m is None or self.v is None:
            self.m = np.zeros_like(w)
            self.v = np.full_like(w, p.tau * p.tau)
        self.m = p.beta1 * self.m + (1 - p.beta1) * delta
        d2 = delta * delta
        if p.strategy == "fedadagrad":
            self.v = self.v + d2
        elif p.strategy == "fedyogi":
            self.v = self.v - (1 - p.beta2) * d2 * np.sign(self.v - d2)
        else:  # fedadam
            self.v = p.beta2 * self.v + (1 - p.beta2) * d2
        return w + p.server_lr * self.m / (np.sqrt(self.v) + p.tau)


def train_record(
    round_: int, sampled: Sequence[str], replies: Mapping[str, RoundReply]
) -> dict[str, Any]:
    """Return the record of training round ``round_`` from the replies of the sites that trained:
    per site its rows, mean training loss and validate-local metrics; pooled (row-weighted)."""
    trained = {n: r for n, r in replies.items() if r.rows}
    rows = sum(r.rows for r in trained.values())
    return {
        "round": round_,
        "sampled": list(sampled),
        "train_loss": (
            float(sum(r.rows * float(r.train_loss or 0.0) for r in trained.values()) / rows)
            if rows
            else None
        ),
        "local": weighted_metrics([(r.val_rows, r.local_metrics) for r in trained.values()]),
        "global": {},
        "sites": {
            n: {"rows": r.rows, "train_loss": r.train_loss, "local": dict(r.local_metrics)}
            for n, r in trained.items()
        },
    }


def global_record(replies: Mapping[str, RoundReply]) -> tuple[dict[str, float], dict[str, Any]]:
    """Return the pooled (row-weighted) validate-global metrics and each site's own."""
    pooled = weighted_metrics([(r.val_rows, r.global_metrics) for r in replies.values()])
    per_site = {n: {"val_rows": r.val_rows, **r.global_metrics} for n, r in replies.items()}
    return pooled, per_site
