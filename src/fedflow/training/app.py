"""``app = "train"``: a model from the study's plan trained across sites (docs/training.md).

The coordinator builds the plan's model with the study's seed and sends its weights; each
exchange k validates W_{k-1} at every site (validate-global), trains it at the sampled sites and
validates their own updated weights (validate-local); the server aggregates (FedAvg weighted by
rows, or an adaptive server optimiser) into W_k. Exchange ``rounds + 1`` validates the last
model. The coordinator's whole state is ``ctx.state["checkpoint"]`` (arrays and JSON: global
weights, server optimiser, SCAFFOLD's global control, round, sampling history), which the run
saves after every exchange and ``fedflow resume`` restores. A site's random streams are derived
from the seed, the site and the round, so there is no random state to carry; what a site must
keep — SCAFFOLD's own control c_i — it keeps in its state folder (``SiteContext.store``), one
file per round, and each task names the round to start from. A resumed run ends with the same
bits as one left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Payload,
    Phase,
    SiteContext,
    Table,
    check_min_count,
    numeric_columns,
)
from fedflow.apps.train import (
    RoundReply,
    RoundTask,
    SecureRoundReply,
    ServerOptimizer,
    TrainParams,
    derive_seed,
    global_record,
    is_better,
    lower_is_better,
    sample_sites,
    secure_metric_names,
    train_record,
    weighted_average,
)
from fedflow.errors import AppError, DataError, PolicyError
from fedflow.training.plan import Plan, load_plan, plan_hash, read_plan

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Train", "TrainedModel"]

CHECKPOINT = "checkpoint"
"""The key of the coordinator's resumable state in ``ctx.state``."""
STATE_KEY = "fedflow-site-state"
"""The metadata key of a site's state file (JSON: site, run, round, seed of the round, sha256)."""
PER_SITE_HIDDEN = "not available with secure = true: the coordinator learns only sums over sites"


def _means(names: list[str], sums: np.ndarray, rows: int) -> dict[str, float]:
    """The row-weighted means of the metrics ``names`` from their sums over sites."""
    if rows <= 0:
        return {}
    return {n: float(sums[j] / rows) for j, n in enumerate(names)}


def exact_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """Σ vectors element by element, summed exactly and rounded once (as a secure sum gives):
    ``math.fsum`` of every element's terms, computed for all elements at once — Shewchuk's
    error-free partials, then fsum's rounding from the top partial down (with its half-even
    correction). Elements with a non-finite term or sum go through math.fsum itself."""
    if not vectors:
        return np.zeros(0)
    terms = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])  # sites × values
    partials: list[np.ndarray] = []
    with np.errstate(over="ignore", invalid="ignore"):
        for x in terms:
            for k, y in enumerate(partials):  # x + y = hi + lo exactly (|a| ≥ |b|)
                swap = np.abs(x) < np.abs(y)
                a, b = np.where(swap, y, x), np.where(swap, x, y)
                hi = a + b
                partials[k] = b - (hi - a)
                x = hi
            partials.append(x)
        # the non-zero partials do not overlap: by magnitude, zeros (dropped by fsum) below
        stacked = np.stack(partials)
        order = np.argsort(np.abs(stacked), axis=0, kind="stable")
        part = np.take_along_axis(stacked, order, axis=0)
        total = part[-1].copy()
        lo = np.zeros_like(total)
        below = np.zeros_like(total)  # the partial below the one where the sum became inexact
        looping = np.ones(total.shape, dtype=bool)
        for k in range(len(part) - 2, -1, -1):
            x, y = total, part[k]
            hi = x + y
            low = y - (hi - x)
            total = np.where(looping, hi, total)
            lo = np.where(looping, low, lo)
            stop = looping & (low != 0)
            if k > 0:
                below = np.where(stop, part[k - 1], below)
            looping &= ~stop
        # half-even rounding across partials: lo and the next partial push the same way
        push = ((lo < 0) & (below < 0)) | ((lo > 0) & (below > 0))
        twice = lo * 2
        moved = total + twice
        total = np.where(push & (moved - total == twice), moved, total)
    total = np.where(total == 0, 0.0, total)  # fsum's zero is +0.0
    for j in np.flatnonzero(~(np.isfinite(total) & np.isfinite(terms).all(axis=0))):
        try:
            total[j] = math.fsum(terms[:, j].tolist())
        except OverflowError:  # the exact sum is finite but beyond float64: ±inf
            with np.errstate(over="ignore"):
                total[j] = math.inf if np.sum(terms[:, j] / 2) > 0 else -math.inf
    return total


class Train(App[TrainParams]):
    """Federated training of a torch model (or scikit-learn estimator) from the study's plan."""

    name = "train"
    Params = TrainParams
    reference = "torch (the plan trained centrally on the pooled rows)"
    phases = {
        "round": Phase(RoundTask, RoundReply),
        "secure_round": Phase(RoundTask, SecureRoundReply, summed=True),
    }
    coordinator_imports = ()  # no statistics; the plan's torch: runtime.run's training imports
    secure = True
    """With ``secure = true`` each round is phase ``secure_round``: the coordinator learns only
    Σ n_i·w_i, Σ n_i, the row-weighted sums of the metrics and, for SCAFFOLD, Σ n_i·Δc_i."""
    partial_rounds = True
    """A round aggregates the sites that answered (round_timeout, retries, min_sites)."""
    tolerance = 0.05
    absolute_tolerance = 0.02
    """--compare: the federated model's validation metrics within 5 % (or 0.02) of the centrally
    trained model's (a training run is not an exact computation; comparison.json has both)."""

    def __init__(self) -> None:
        self._plan: Plan | None = None
        self._approved: tuple[str, Path | None] | None = None

    # -- the plan ------------------------------------------------------------------------------
    def use_code(self, code_hash: str, approved_copy: Path | None) -> None:
        """At a site: the hash of the plan the coordinator sent, and the copy to run (a defended
        site's own approved copy; an owned site's copy of the text sent, in its run folder; None
        at an owned site without a run folder: the plan file the study names runs)."""
        self._approved = (code_hash, approved_copy)

    def study_code(self, params: TrainParams) -> str:
        """The plan's source, sent to the sites (defended sites match its hash to approvals)."""
        return read_plan(Path(params.plan)).decode("utf-8")

    def plan(self, params: TrainParams) -> Plan:
        """Return the plan, loaded once: the approved copy at a defended site, else the file the
        study names; always checked against the study's hash."""
        if self._plan is None:
            expected = params.plan_sha256 or None
            path = Path(params.plan)
            if self._approved is not None:
                sent, copy = self._approved
                if expected is not None and sent != expected:
                    raise PolicyError(f"the plan sent has hash {sent}, the study's {expected}")
                expected = sent
                path = copy if copy is not None else path
            self._plan = load_plan(path, expected)
        return self._plan

    # -- parameters ----------------------------------------------------------------------------
    def resolve(self, params: TrainParams, columns: Mapping[str, str]) -> TrainParams:
        if params.target not in columns:
            raise AppError(
                f"app 'train': target column '{params.target}' is not in the sites' data"
            )
        if params.features is None:
            features = numeric_columns(columns, exclude=[params.target])
            if not features:
                raise AppError(f"app 'train': no numeric column besides '{params.target}'")
            params = msgspec.structs.replace(params, features=features)
        digest = plan_hash(read_plan(Path(params.plan)))
        if params.plan_sha256 and params.plan_sha256 != digest:
            raise AppError(
                f"plan {params.plan} has hash {digest}, not {params.plan_sha256} as the study says"
            )
        return msgspec.structs.replace(params, plan_sha256=digest)

    def columns(self, params: TrainParams) -> dict[str, ColumnKind]:
        needed: dict[str, ColumnKind] = {params.target: "numeric"}
        for f in params.features or []:
            needed[f] = "numeric"
        return needed

    def secure_refusal(self, params: TrainParams) -> str | None:
        """Why these parameters cannot run with ``secure = true`` (``fedflow validate`` and the
        run's start refuse with it), or None: every strategy runs securely (SCAFFOLD's controls
        c_i stay at the sites, which send only n_i·Δc_i into the sum)."""
        return None

    # -- the coordinator -----------------------------------------------------------------------
    def start(self, params: TrainParams, ctx: CoordinatorContext) -> Continue | Done:
        if ctx.secure and (reason := self.secure_refusal(params)):
            raise AppError(reason)
        saved = ctx.state.get(CHECKPOINT)
        weights, layout = self._initial(params, ctx.seed)
        if saved is not None:
            self._check_resumable(saved, params, ctx, weights.size)
            if ctx.round > params.rounds:  # interrupted after the last validation
                return self._done(params, saved["meta"], saved["arrays"])
            return self._next(params, ctx)
        ctx.state[CHECKPOINT] = {
            "arrays": {"weights": weights},
            "meta": {
                "round": 0,
                "params": self.params_to_dict(params),
                "seed": ctx.seed,
                "sites": list(ctx.sites),
                "layout": {n: list(s) for n, s in zip(layout.names, layout.shapes, strict=True)},
                "dtype": str(layout.dtype),
                "best_round": None,
                "best_value": None,
                "history": [{"round": 0, "sampled": [], "global": {}, "sites": {}}],
            },
        }
        if params.strategy == "scaffold":
            meta = ctx.state[CHECKPOINT]["meta"]
            meta["run_key"] = secrets.token_hex(8)  # names the sites' state files of this run
            meta["state_rounds"] = {}  # site -> the last round its control update went into c
        return self._next(params, ctx)

    def _initial(self, params: TrainParams, seed: int | None) -> tuple[np.ndarray, Any]:
        """The initial global weights and their layout: the plan's torch model built with the
        study's seed, or zeros for a scikit-learn estimator."""
        from fedflow.training.sklearn_backend import is_sklearn, sk_layout

        plan = self.plan(params)
        probe = plan.model()
        if is_sklearn(probe):
            if params.strategy in ("fedprox", "scaffold"):
                raise AppError(
                    f"app 'train': strategy '{params.strategy}' needs a torch model; the plan's "
                    "model is a scikit-learn estimator"
                )
            layout = sk_layout(plan, probe, len(params.features or []))
            return np.zeros(layout.size), layout
        from fedflow.training.engine import initial_weights

        return initial_weights(plan, seed)

    def _check_resumable(
        self, saved: Mapping[str, Any], params: TrainParams, ctx: CoordinatorContext, size: int
    ) -> None:
        meta = saved["meta"]
        if meta["params"] != self.params_to_dict(params):
            raise AppError("the checkpoint was written with other parameters (or another plan)")
        if meta["seed"] != ctx.seed or meta["sites"] != list(ctx.sites):
            raise AppError("the checkpoint was written with another seed or other sites")
        if meta["round"] != ctx.round or saved["arrays"]["weights"].size != size:
            raise AppError("the checkpoint does not fit this run")
        older = params.strategy == "scaffold" and "run_key" not in meta
        if older or any(key.startswith("control/") for key in saved["arrays"]):
            raise AppError(
                "the checkpoint holds the sites' SCAFFOLD controls (written by an older fedflow, "
                "before the sites kept their own); it cannot be resumed"
            )

    def _next(self, params: TrainParams, ctx: CoordinatorContext) -> Continue:
        saved = ctx.state[CHECKPOINT]
        weights = saved["arrays"]["weights"]
        k = ctx.round + 1
        everyone = RoundTask(weights=weights, train=False, validate=params.validation > 0)
        phase = "secure_round" if ctx.secure else "round"
        if k > params.rounds:
            return Continue(phase, everyone)
        sampled = sample_sites(list(ctx.sites), params.fraction, params.min_sites, ctx.seed, k)
        saved["meta"]["sampling"] = {**saved["meta"].get("sampling", {}), str(k): sampled}
        validate = params.validation > 0
        if params.strategy != "scaffold":
            trains = RoundTask(weights=weights, train=True, validate=validate)
            return Continue(phase, everyone, per_site={s: trains for s in sampled})
        meta = saved["meta"]
        c = saved["arrays"].get("control", np.zeros(weights.size, dtype=np.float64))
        per_site: dict[str, Payload] = {
            s: RoundTask(
                weights=weights,
                train=True,
                validate=validate,
                control=c,
                state_round=int(meta["state_rounds"].get(s, 0)),
                run=meta["run_key"],
            )
            for s in sampled
        }
        return Continue(phase, everyone, per_site=per_site)

    def aggregate_round(
        self, replies: Mapping[str, RoundReply], params: TrainParams, ctx: CoordinatorContext
    ) -> Continue | Done:
        saved = ctx.state[CHECKPOINT]
        arrays, meta = saved["arrays"], saved["meta"]
        k = ctx.round
        history = meta["history"]
        # validate-global: the metrics of W_{k-1}, the weights this exchange carried
        pooled, per_site = global_record(replies)
        history[k - 1]["global_sites"] = per_site
        self._validated(params, meta, arrays, pooled, k - 1)
        if k > params.rounds:
            return self._done(params, meta, arrays)
        sampled = meta["sampling"][str(k)]
        answered = [s for s in sampled if s in replies]
        if len(answered) < params.min_sites:
            raise AppError(
                f"app 'train': round {k}: {len(answered)} of the {len(sampled)} sampled sites "
                f"answered ({', '.join(answered) or 'none'}), fewer than min_sites = "
                f"{params.min_sites}"
            )
        if len(answered) < len(sampled):
            missing = ", ".join(s for s in sampled if s not in replies)
            ctx.notes.append(f"round {k}: aggregated without {missing} (no answer)")
        updates = []
        for name in ctx.sites:  # study order
            if name not in replies:
                continue
            reply = replies[name]
            if name in sampled:
                if reply.weights is None or reply.rows <= 0:
                    raise AppError(f"app 'train': site '{name}' was sampled but sent no weights")
                if reply.weights.shape != arrays["weights"].shape:
                    raise AppError(
                        f"app 'train': site '{name}' sent {reply.weights.shape} weights, "
                        f"the model has {arrays['weights'].shape}"
                    )
                updates.append((reply.rows, reply.weights))
            elif reply.weights is not None:
                raise AppError(f"app 'train': site '{name}' trained though not sampled")
        if params.strategy == "scaffold":
            rows = self._training_rows(params, ctx)  # every site's, as FedAvg weighs them
            deltas = {}
            for name in answered:
                delta = replies[name].control_delta
                if delta is None or delta.shape != arrays["weights"].shape:
                    raise AppError(f"app 'train': site '{name}' sent no SCAFFOLD control update")
                deltas[name] = rows[name] * np.asarray(delta, dtype=np.float64)
            self._update_control(arrays, exact_sum(list(deltas.values())), rows)
            meta["state_rounds"].update({name: k for name in answered})
        server = ServerOptimizer(params, arrays)
        new = server.step(arrays["weights"], weighted_average(updates))
        arrays["weights"] = new.astype(arrays["weights"].dtype)
        arrays.update(server.state())
        history.append(train_record(k, sampled, {n: replies[n] for n in answered}))
        history[-1]["answered"] = answered
        meta["round"] = k
        if params.validation == 0:  # no held-out rows: the last model is the best one known
            arrays["best"], meta["best_round"] = arrays["weights"], k
        return self._next(params, ctx)

    @staticmethod
    def _validated(
        params: TrainParams,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        pooled: dict[str, float],
        round_: int,
    ) -> None:
        """Record the pooled validate-global metrics of W_{k-1} (``round_`` = k − 1, exchange k
        carried them) and keep W_{k-1} as the best model when its metric beats the best so far."""
        meta["history"][round_]["global"] = pooled
        if params.validation > 0:
            if params.metric not in pooled:
                raise AppError(
                    f"app 'train': metric '{params.metric}' is not among the plan's metrics "
                    f"({', '.join(pooled) or 'none'})"
                )
            if is_better(pooled[params.metric], meta["best_value"], lower_is_better(params)):
                meta["best_value"], meta["best_round"] = pooled[params.metric], round_
                arrays["best"] = arrays["weights"]

    def aggregate_secure_round(
        self,
        replies: Mapping[str, SecureRoundReply],
        params: TrainParams,
        ctx: CoordinatorContext,
    ) -> Continue | Done:
        """``secure = true``: one sum over the sites that answered (``replies[SUM]``); the new
        global weights are Σ n_i·w_i / Σ n_i, metrics Σ m_i·metric_i / Σ m_i."""
        total = replies[SUM]
        saved = ctx.state[CHECKPOINT]
        arrays, meta = saved["arrays"], saved["meta"]
        k = ctx.round
        history = meta["history"]
        names = secure_metric_names(params)
        pooled = _means(names, total.global_metrics, total.val_rows)
        history[k - 1]["global_sites"] = PER_SITE_HIDDEN
        self._validated(params, meta, arrays, pooled, k - 1)
        if k > params.rounds:
            return self._done(params, meta, arrays)
        sampled = meta["sampling"][str(k)]
        if total.trained < params.min_sites:
            raise AppError(
                f"app 'train': round {k}: {total.trained} of the {len(sampled)} sampled sites "
                f"answered, fewer than min_sites = {params.min_sites}"
            )
        if total.trained > len(sampled):
            raise AppError(
                f"app 'train': round {k}: {total.trained} sites trained, {len(sampled)} sampled"
            )
        if total.trained < len(sampled):
            ctx.notes.append(
                f"round {k}: aggregated {total.trained} of the {len(sampled)} sampled sites "
                "(secure sum over those that answered)"
            )
        if total.rows <= 0:
            raise AppError("app 'train': no training rows in this round")
        if total.weights.shape != arrays["weights"].shape:
            raise AppError(
                f"app 'train': the summed weights have shape {total.weights.shape}, "
                f"the model {arrays['weights'].shape}"
            )
        if params.strategy == "scaffold":
            if total.control.shape != arrays["weights"].shape:
                raise AppError(
                    f"app 'train': the summed SCAFFOLD control updates have shape "
                    f"{total.control.shape}, the model {arrays['weights'].shape}"
                )
            self._update_control(arrays, total.control, self._training_rows(params, ctx))
            summed = [s for s in sampled if s in (ctx.summed_over or [])]
            if len(summed) != total.trained:
                raise AppError(
                    f"app 'train': round {k}: {total.trained} sites trained, but the sum is over "
                    f"{len(summed)} sampled site(s)"
                )
            meta["state_rounds"].update({name: k for name in summed})
        server = ServerOptimizer(params, arrays)
        new = server.step(arrays["weights"], total.weights / total.rows)
        arrays["weights"] = new.astype(arrays["weights"].dtype)
        arrays.update(server.state())
        history.append(
            {
                "round": k,
                "sampled": list(sampled),
                "train_loss": total.train_loss / total.rows,
                "local": _means(names, total.local_metrics, total.local_val_rows),
                "global": {},
                "sites": PER_SITE_HIDDEN,
                "trained": total.trained,
            }
        )
        meta["round"] = k
        if params.validation == 0:
            arrays["best"], meta["best_round"] = arrays["weights"], k
        return self._next(params, ctx)

    @staticmethod
    def _update_control(
        arrays: dict[str, np.ndarray], total: np.ndarray, rows: Mapping[str, int]
    ) -> None:
        """SCAFFOLD: c += Σ_{i∈S} n_i·Δc_i / Σ_i n_i over the sites S whose update arrived and
        every site's training rows n_i (Karimireddy et al.'s c += (1/N)·Σ_{i∈S} Δc_i, weighted
        by rows as FedAvg weighs weights). Each site added Δc_i to its own c_i, so c stays the
        row-weighted mean of the sites' controls; a site whose update did not arrive (lost, cut
        off, or left out of a secure sum) keeps its c_i, and its term is simply missing."""
        size = arrays["weights"].size
        arrays["control"] = arrays.get("control", np.zeros(size)) + total / sum(rows.values())

    @staticmethod
    def _training_rows(params: TrainParams, ctx: CoordinatorContext) -> dict[str, int]:
        """Every site's training rows (its held-out rows excluded), as the sites compute them."""
        return {
            n: info.rows - int(round(params.validation * info.rows))
            for n, info in ctx.sites.items()
        }

    def _done(
        self, params: TrainParams, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> Done:
        from fedflow.training.engine import Layout
        from fedflow.training.weights import to_safetensors

        meta["round"] = params.rounds + 1
        layout = Layout(
            tuple(meta["layout"]),
            tuple(tuple(s) for s in meta["layout"].values()),
            np.dtype(meta["dtype"]),
        )
        info = {"plan_sha256": params.plan_sha256, "features": json.dumps(params.features)}
        history = meta["history"]
        best_round = meta["best_round"]
        last, best = arrays["weights"], arrays.get("best", arrays["weights"])
        result = {
            "rounds": params.rounds,
            "strategy": params.strategy,
            "metric": params.metric,
            "better": "lower" if lower_is_better(params) else "higher",
            "best_round": best_round,
            "best": history[best_round]["global"] if best_round is not None else {},
            "last": history[params.rounds]["global"],
            "last_train_loss": history[params.rounds].get("train_loss"),
            "plan_sha256": params.plan_sha256,
            "weights": {"values": int(last.size), "dtype": str(last.dtype)},
            "history": history,
        }
        return Done(
            result,
            artifacts={
                "model-last.safetensors": to_safetensors(
                    layout.named(last), {**info, "round": str(params.rounds)}
                ),
                "model-best.safetensors": to_safetensors(
                    layout.named(best), {**info, "round": str(best_round)}
                ),
                "plan.py": self.plan(params).source,
            },
        )

    # -- the site ------------------------------------------------------------------------------
    def local_round(
        self, data: Table, params: TrainParams, request: RoundTask, ctx: SiteContext
    ) -> RoundReply:
        from fedflow.training.engine import evaluate, local_train, model_with

        site = ctx.state.get("train")
        if site is None:
            site = ctx.state["train"] = self._site_data(data, params, ctx)
        plan = self.plan(params)
        x, y, train_rows, held = site["x"], site["y"], site["train"], site["held"]
        if site["sklearn"]:
            return self._sklearn_round(plan, site, params, request, ctx)
        model, layout = model_with(plan, request.weights, ctx.seed)
        xv, yv = x[held], y[held]
        global_metrics = evaluate(plan, model, xv, yv) if request.validate else {}
        if not request.train:
            return RoundReply(val_rows=len(held), global_metrics=global_metrics)
        seed = derive_seed(ctx.seed, "train", ctx.site, ctx.round)
        own = None
        if request.control is not None:  # SCAFFOLD: this site's own control c_i
            own = self._own_control(ctx, request, np.asarray(request.weights).size)
        weights, loss, steps = local_train(
            plan,
            model,
            layout,
            x[train_rows],
            y[train_rows],
            params,
            seed,
            None if own is None or request.control is None else request.control - own,
        )
        local_metrics = evaluate(plan, model, xv, yv) if request.validate else {}
        delta = None
        if own is not None and request.control is not None:  # SCAFFOLD option II
            moved = np.asarray(request.weights, np.float64) - np.asarray(weights, np.float64)
            delta = moved / (steps * params.lr) - request.control
            self._keep_control(ctx, request, own + delta, seed)
        return RoundReply(
            val_rows=len(held),
            global_metrics=global_metrics,
            rows=len(train_rows),
            weights=weights,
            train_loss=loss,
            local_metrics=local_metrics,
            control_delta=delta,
        )

    def local_secure_round(
        self, data: Table, params: TrainParams, request: RoundTask, ctx: SiteContext
    ) -> SecureRoundReply:
        """``secure = true``: the round as ``local_round``, its reply turned into terms of sums
        (n_i·w_i, n_i, row-weighted metrics; zeros for what the site did not do)."""
        reply = self.local_round(data, params, request, ctx)
        size = np.asarray(request.weights).size
        scaffold = params.strategy == "scaffold"
        names = secure_metric_names(params)

        def terms(metrics: Mapping[str, float], rows: int) -> np.ndarray:
            if not rows or not metrics:
                return np.zeros(len(names))
            missing = [n for n in names if n not in metrics]
            if missing:
                raise AppError(
                    f"app 'train': metric '{missing[0]}' is not among the plan's metrics "
                    f"({', '.join(metrics)})"
                )
            return np.array([rows * float(metrics[n]) for n in names], dtype=np.float64)

        if reply.weights is None:
            return SecureRoundReply(
                trained=0,
                rows=0,
                weights=np.zeros(np.asarray(request.weights).size, dtype=np.float64),
                train_loss=0.0,
                val_rows=reply.val_rows if reply.global_metrics else 0,
                global_metrics=terms(reply.global_metrics, reply.val_rows),
                local_val_rows=0,
                local_metrics=np.zeros(len(names)),
                control=np.zeros(size if scaffold else 0),
            )
        rows = reply.rows
        return SecureRoundReply(
            trained=1,
            rows=rows,
            weights=rows * np.asarray(reply.weights, dtype=np.float64),
            train_loss=rows * float(reply.train_loss or 0.0),
            val_rows=reply.val_rows if reply.global_metrics else 0,
            global_metrics=terms(reply.global_metrics, reply.val_rows),
            local_val_rows=reply.val_rows if reply.local_metrics else 0,
            local_metrics=terms(reply.local_metrics, reply.val_rows),
            control=(
                rows * np.asarray(reply.control_delta, dtype=np.float64)
                if reply.control_delta is not None
                else np.zeros(size if scaffold else 0)
            ),
        )

    # -- the site's own state (SCAFFOLD's control c_i) ------------------------------------------
    @staticmethod
    def _state_name(run: str, round_: int) -> str:
        return f"train-{run}-round-{round_}.safetensors"

    def _own_control(self, ctx: SiteContext, request: RoundTask, size: int) -> np.ndarray:
        """This site's control c_i after round ``request.state_round`` (zeros before any): from
        memory when this agent wrote it, else from its state file; DataError naming the site and
        the file when that is missing, corrupt or another run's."""
        base = request.state_round
        if base == 0:
            return np.zeros(size, dtype=np.float64)
        held: dict[int, np.ndarray] = ctx.state.setdefault("controls", {})
        if base in held and ctx.state.get("run") == request.run:
            return held[base]
        from fedflow.training.weights import from_safetensors

        name = self._state_name(request.run, base)
        where = ctx.store.where(name)
        lead = (
            f"site '{ctx.site}' cannot start round {ctx.round} from its own state of round {base}"
        )
        try:
            content = ctx.store.read(name)
        except DataError as exc:
            raise DataError(f"{lead}: {exc.message}", file=where) from None
        try:
            arrays, meta = from_safetensors(content, where)
            info = json.loads(meta[STATE_KEY])
            control = np.asarray(arrays["control"], dtype=np.float64)
            digest = hashlib.sha256(control.tobytes()).hexdigest()
        except (DataError, KeyError, ValueError, TypeError):
            raise DataError(
                f"{lead}: state file {where} is corrupt (unreadable)", file=where
            ) from None
        if digest != info.get("sha256"):
            raise DataError(f"{lead}: state file {where} is corrupt (hash mismatch)", file=where)
        found = (info.get("site"), info.get("run"), info.get("round"))
        if found != (ctx.site, request.run, base) or control.shape != (size,):
            raise DataError(
                f"{lead}: state file {where} holds site '{found[0]}', run {found[1]}, round "
                f"{found[2]} ({control.size} values; the model has {size})",
                file=where,
            )
        return control

    def _keep_control(
        self, ctx: SiteContext, request: RoundTask, control: np.ndarray, seed: int
    ) -> None:
        """Write c_i after this round into the site's state folder before the reply leaves, and
        keep only what a resumed or restarted run may ask for: the round it started from (its
        update may not reach c) and this one."""
        from fedflow.training.weights import to_safetensors

        control = np.ascontiguousarray(control, dtype=np.float64)
        info = {
            "site": ctx.site,
            "run": request.run,
            "round": ctx.round,
            "train_seed": seed,
            "sha256": hashlib.sha256(control.tobytes()).hexdigest(),
        }
        name = self._state_name(request.run, ctx.round)
        ctx.store.write(name, to_safetensors({"control": control}, {STATE_KEY: json.dumps(info)}))
        keep = {request.state_round, ctx.round}
        ctx.store.prune(
            f"train-{request.run}-round-", [self._state_name(request.run, r) for r in keep]
        )
        held: dict[int, np.ndarray] = ctx.state.setdefault("controls", {})
        if ctx.state.get("run") != request.run:
            held.clear()
            ctx.state["run"] = request.run
        held[ctx.round] = control
        for r in [r for r in held if r not in keep]:
            del held[r]

    def _sklearn_round(
        self,
        plan: Plan,
        site: dict[str, Any],
        params: TrainParams,
        request: RoundTask,
        ctx: SiteContext,
    ) -> RoundReply:
        from fedflow.training.sklearn_backend import sk_evaluate, sk_model_with, sk_train

        x, y, train_rows, held = site["x"], site["y"], site["train"], site["held"]
        model, layout = sk_model_with(plan, request.weights, x.shape[1])
        xv, yv = x[held], y[held]
        global_metrics = sk_evaluate(plan, model, xv, yv) if request.validate else {}
        if not request.train:
            return RoundReply(val_rows=len(held), global_metrics=global_metrics)
        seed = derive_seed(ctx.seed, "train", ctx.site, ctx.round)
        weights, loss, _ = sk_train(plan, model, layout, x[train_rows], y[train_rows], params, seed)
        return RoundReply(
            val_rows=len(held),
            global_metrics=global_metrics,
            rows=len(train_rows),
            weights=weights,
            train_loss=loss,
            local_metrics=sk_evaluate(plan, model, xv, yv) if request.validate else {},
        )

    def _site_data(self, data: Table, params: TrainParams, ctx: SiteContext) -> dict[str, Any]:
        from fedflow.training.engine import split_rows
        from fedflow.training.sklearn_backend import is_sklearn

        plan = self.plan(params)
        train_rows, held = split_rows(data.n_rows, params.validation, ctx.seed, ctx.site)
        check_min_count(len(train_rows), ctx.min_count, "the site's training rows")
        if params.validation > 0:
            check_min_count(len(held), ctx.min_count, "the site's held-out rows")
        target = np.asarray(data[params.target], dtype=np.float64)
        classes = bool(getattr(plan.module, "classification", False))
        if classes and not np.all((target == np.round(target)) & (target >= 0)):
            raise DataError(
                f"column '{params.target}' must hold class numbers 0, 1, 2, … "
                "(the plan says classification = True)",
                column=params.target,
            )
        matrix = data.matrix(list(params.features or []))
        if is_sklearn(plan.model()):
            if getattr(plan.module, "classes", None) is not None:
                target = target.astype(np.int64)
            return {"sklearn": True, "x": matrix, "y": target, "train": train_rows, "held": held}
        import torch

        from fedflow.training.engine import layout_of, to_tensors

        torch.manual_seed(0)
        dtype = layout_of(plan.model()).dtype
        x, y = to_tensors(matrix, target, dtype, classes)
        return {
            "sklearn": False,
            "x": x,
            "y": y,
            "train": torch.from_numpy(train_rows),
            "held": torch.from_numpy(held),
        }

    # -- the centralized twin and predict ------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: TrainParams) -> dict[str, Any]:
        """The centralized twin of a study without a seed (see ``centralized_seeded``)."""
        return self.centralized_seeded(pooled, params, None)

    def centralized_seeded(
        self, pooled: pd.DataFrame, params: TrainParams, seed: int | None
    ) -> dict[str, Any]:
        """Train the plan on the pooled rows for rounds × local_epochs epochs (same batch size,
        lr and optimizer, the model built from the study's ``seed`` as the federated run builds
        it), holding out the same fraction of the pooled rows (seeded by the study's seed);
        return its validation metrics as ``last``."""
        from fedflow.training.engine import split_rows
        from fedflow.training.sklearn_backend import is_sklearn

        plan = self.plan(params)
        train_rows, held = split_rows(len(pooled), params.validation, seed, "pooled")
        central = msgspec.structs.replace(
            params, local_epochs=params.rounds * params.local_epochs, mu=0.0, strategy="fedavg"
        )
        train_seed = derive_seed(seed, "centralized")
        if is_sklearn(plan.model()):
            from fedflow.training.sklearn_backend import sk_evaluate, sk_model_with, sk_train

            features = list(params.features or [])
            xs = pooled[features].to_numpy(dtype=np.float64)
            ys = pooled[params.target].to_numpy(dtype=np.float64)
            if getattr(plan.module, "classes", None) is not None:
                ys = ys.astype(np.int64)
            est, lay = sk_model_with(plan, self._initial(params, seed)[0], len(features))
            _, loss, _ = sk_train(
                plan, est, lay, xs[train_rows], ys[train_rows], central, train_seed
            )
            return {
                "metric": params.metric,
                "last": sk_evaluate(plan, est, xs[held], ys[held]),
                "last_train_loss": loss,
            }
        import torch

        from fedflow.training.engine import (
            evaluate,
            initial_weights,
            local_train,
            model_with,
            to_tensors,
        )

        weights, layout = initial_weights(plan, seed)
        model, _ = model_with(plan, weights)
        target = pooled[params.target].to_numpy(dtype=np.float64)
        classes = bool(getattr(plan.module, "classification", False))
        x, y = to_tensors(
            pooled[list(params.features or [])].to_numpy(dtype=np.float64),
            target,
            layout.dtype,
            classes,
        )
        tr, hd = torch.from_numpy(train_rows), torch.from_numpy(held)
        _, loss, _ = local_train(plan, model, layout, x[tr], y[tr], central, train_seed)
        return {
            "metric": params.metric,
            "last": evaluate(plan, model, x[hd], y[hd]),
            "last_train_loss": loss,
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The study's metric of the last model on held-out rows (the other metrics are in
        result.json and the centralized run's in comparison.json's reference result)."""
        metric = result["metric"]
        return {"last": {metric: result["last"][metric]}}

    @classmethod
    def load_model(cls, artifacts: Mapping[str, bytes], where: str = "") -> TrainedModel:
        """The best model of a training run (model-best.safetensors, the plan beside it)."""
        return TrainedModel.load(artifacts, where, "model-best.safetensors")


class TrainedModel:
    """A trained plan's model that scores rows: ``prediction`` (argmax over the outputs when the
    model has several, else its one output) and every raw ``output_<j>``."""

    def __init__(self, plan: Plan, weights: np.ndarray, features: list[str]) -> None:
        from fedflow.training.sklearn_backend import is_sklearn, sk_model_with

        self.plan = plan
        self._features = features
        self.sklearn = is_sklearn(plan.model())
        if self.sklearn:
            self.model, _ = sk_model_with(plan, weights, len(features))
            return
        from fedflow.training.engine import model_with

        self.model, _ = model_with(plan, weights)

    @property
    def features(self) -> list[str]:
        return self._features

    @classmethod
    def load(cls, artifacts: Mapping[str, bytes], where: str, name: str) -> TrainedModel:
        from fedflow.training.engine import layout_of
        from fedflow.training.weights import from_safetensors

        named, meta = from_safetensors(artifacts[name], f"{where}/{name}")
        plan_path = Path(where) / "plan.py"
        artifacts["plan.py"]  # a missing plan raises DataError naming it
        plan = load_plan(plan_path, meta.get("plan_sha256") or None)
        features = json.loads(meta.get("features", "null"))
        if not isinstance(features, list):
            raise DataError(f"{where}/{name}: names no features", file=f"{where}/{name}")
        from fedflow.training.sklearn_backend import is_sklearn, sk_layout

        probe = plan.model()
        if is_sklearn(probe):
            layout = sk_layout(plan, probe, len(features))
        else:
            import torch

            torch.manual_seed(0)
            layout = layout_of(plan.model())
        return cls(plan, layout.flat(named), [str(f) for f in features])

    def predict_columns(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.sklearn:
            from fedflow.training.sklearn_backend import sk_output

            prediction = np.asarray(self.model.predict(x))
            out = sk_output(self.model, x).reshape(len(x), -1)
            found: dict[str, np.ndarray] = {"prediction": prediction}
            if getattr(self.model, "classes_", None) is not None:
                found.update({f"output_{j}": out[:, j] for j in range(out.shape[1])})
            return found
        import torch

        from fedflow.training.engine import layout_of

        dtype = layout_of(self.model).dtype
        self.model.eval()
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))).numpy()
        out = out.reshape(len(x), -1).astype(np.float64)
        columns: dict[str, np.ndarray] = {}
        if out.shape[1] == 1:
            columns["prediction"] = out[:, 0]
        else:
            columns["prediction"] = out.argmax(axis=1).astype(np.int64)
            for j in range(out.shape[1]):
                columns[f"output_{j}"] = out[:, j]
        return columns
