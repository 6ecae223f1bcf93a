"""Federated training with ``secure = true``: the coordinator learns only Σ n_i·w_i, Σ n_i and
row-weighted sums of the metrics, and the model is the plaintext run's; a site lost during a
round leaves the round's sum (its masks removed with the survivors' shares) and the run goes on.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow.apps.base import Table  # noqa: E402
from fedflow.connectors.memory import MemoryConnector  # noqa: E402
from fedflow.errors import AppError  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
from fedflow.results.trace import TraceWriter  # noqa: E402
from fedflow.runtime.coordinator import Coordinator  # noqa: E402
from fedflow.runtime.simulate import in_memory, simulate  # noqa: E402
from fedflow.secure import FixedPoint  # noqa: E402
from fedflow.training.resilience import resilient_exchange  # noqa: E402
from fedflow.training.weights import from_safetensors  # noqa: E402
from fedflow.wire import RelayShares, SecureTask, Task  # noqa: E402

from .helpers import LINEAR_PLAN, MLP_PLAN, blobs, mlp_params, write_plan  # noqa: E402

SIZES = [50, 40, 60]


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path, MLP_PLAN)


def _weights(outcome: Any, name: str = "model-last.safetensors") -> dict[str, np.ndarray]:
    named, _ = from_safetensors(outcome.done.artifacts[name], name)
    return named


def _secure_history(outcome: Any) -> list[dict[str, Any]]:
    history = outcome.done.result["history"]
    # the secure formulation ran: the coordinator had no per-site reply to record
    assert all(isinstance(h["sites"], str) for h in history[1:])
    assert all(h["trained"] >= 1 for h in history[1:])
    return history


def test_secure_fedavg_gives_the_plaintext_model_bit_for_bit(plan: Path) -> None:
    sites = blobs(SIZES)
    plain = simulate("train", mlp_params(plan), sites, seed=3)
    secure = simulate("train", mlp_params(plan), sites, seed=3, secure=True)
    history = _secure_history(secure)
    assert [h["trained"] for h in history[1:]] == [3, 3, 3]
    # float32 weights: n_i·w_i is exact in float64 and the secure sum is exact, rounded once
    for name in ("model-last.safetensors", "model-best.safetensors"):
        assert secure.done.artifacts[name] == plain.done.artifacts[name]
    for got, want in zip(history, plain.done.result["history"], strict=True):
        for key in ("global", "local"):
            assert got.get(key, {}).keys() <= want.get(key, {}).keys()
            for metric, value in got.get(key, {}).items():
                assert value == pytest.approx(want[key][metric], rel=1e-12, abs=1e-15)
        if got["round"]:
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-12)
    assert secure.done.result["best_round"] == plain.done.result["best_round"]


def test_secure_fedavg_of_a_float64_model_within_1e_12(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    tables = {}
    for i, n in enumerate(SIZES):
        x = rng.normal(size=(n, 3))
        y = x @ np.array([1.5, -2.0, 0.5]) + 0.3 + rng.normal(scale=0.1, size=n)
        tables[f"s{i}"] = Table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    linear = write_plan(tmp_path, LINEAR_PLAN.format(p=3), "linear.py")
    params = {"plan": str(linear), "target": "y", "rounds": 4, "lr": 0.05, "batch_size": 0}
    plain = simulate("train", params, tables, seed=2)
    secure = simulate("train", params, tables, seed=2, secure=True)
    _secure_history(secure)
    want, got = _weights(plain), _weights(secure)
    assert want.keys() == got.keys()
    moved = max(float(np.max(np.abs(w))) for w in want.values())
    assert moved > 0.1  # the model trained: the comparison is not between zeros
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12)


def test_secure_fedadam_with_sampling_gives_the_plaintext_model(plan: Path) -> None:
    sites = blobs(SIZES, seed=1)
    params = mlp_params(plan, strategy="fedadam", server_lr=0.05, fraction=0.6, rounds=4)
    plain = simulate("train", params, sites, seed=6)
    secure = simulate("train", params, sites, seed=6, secure=True)
    history = _secure_history(secure)
    # two of three sites train each round: the third sends zeros
    assert [h["trained"] for h in history[1:]] == [2, 2, 2, 2]
    assert [h["sampled"] for h in history] == [h["sampled"] for h in plain.done.result["history"]]
    secure_last = secure.done.artifacts["model-last.safetensors"]
    assert secure_last == plain.done.artifacts["model-last.safetensors"]
    assert secure.done.result["last"] == pytest.approx(plain.done.result["last"], rel=1e-12)


def test_a_secure_sklearn_plan_gives_the_plaintext_model(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from .test_sklearn import PLAN

    plan = write_plan(tmp_path, PLAN, "sk.py")
    sites = blobs([60, 45, 80])
    params = {"plan": str(plan), "target": "label", "rounds": 3, "metric": "accuracy"}
    plain = simulate("train", params, sites, seed=2)
    secure = simulate("train", params, sites, seed=2, secure=True)
    _secure_history(secure)
    want, got = _weights(plain), _weights(secure)
    assert max(float(np.max(np.abs(w))) for w in want.values()) > 0.01
    for key in want:  # float64 coefficients: n_i·w_i rounded once at the site
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12)


# -- a site lost during a secure round ------------------------------------------------------------


class FlakySite(MemoryConnector):
    """An in-process site whose agent can be restarted; its agent exits on a message whose
    (type, round, start number) is in ``faults``, and never answers one in ``hangs``."""

    def __init__(
        self,
        name: str,
        table: Table,
        faults: set[tuple[type, int, int]],
        hangs: set[tuple[type, int, int]] | None = None,
    ) -> None:
        super().__init__(name)
        self.table, self.faults, self.hangs, self.starts = table, faults, hangs or set(), 0

    async def start(self) -> None:
        self.starts += 1
        agent = NodeAgent(self.site, preloaded=in_memory(self.table, self.site))
        start = self.starts

        def handle(message: Any) -> Any:
            key = (type(message), getattr(message, "round", None), start)
            if key in self.faults:
                raise RuntimeError("killed")
            if key in self.hangs:
                return None
            return agent.handle(message)

        self.handler = handle
        self._replies = asyncio.Queue()
        self.started, self.closed = True, False


def _run(
    plan: Path,
    faults: dict[str, set[tuple[type, int, int]]],
    *,
    secure: bool,
    trace: Path | None = None,
    hangs: dict[str, set[tuple[type, int, int]]] | None = None,
    **extra: Any,
) -> tuple[Any, Coordinator, dict[str, FlakySite]]:
    connectors = {
        n: FlakySite(n, t, faults.get(n, set()), (hangs or {}).get(n, set()))
        for n, t in blobs(SIZES).items()
    }
    coordinator = Coordinator(
        "train",
        mlp_params(plan, **extra),
        connectors,
        seed=4,
        round_exchange=resilient_exchange,
        secure=secure,
        trace=TraceWriter(trace) if trace is not None else None,
    )
    outcome = asyncio.run(coordinator.run())
    return outcome, coordinator, connectors


def _events(coordinator: Coordinator) -> list[tuple[int, str, str]]:
    return [(e["round"], e["site"], e["event"]) for e in coordinator.metrics["round_events"]]


def test_a_site_lost_after_sharing_its_keys_leaves_the_round_which_sums_the_survivors(
    plan: Path,
) -> None:
    # the reference: the same loss in a plaintext run (the round aggregates the two others)
    reference, _, _ = _run(plan, {"site1": {(Task, 2, 1)}}, secure=False, min_sites=2)
    assert any("aggregated without site1" in n for n in reference.notes)
    # secure: site1 dies when the sealed shares come (step 3), after its keys were relayed
    outcome, coordinator, connectors = _run(
        plan, {"site1": {(RelayShares, 2, 1)}}, secure=True, min_sites=2, retries=1
    )
    history = _secure_history(outcome)
    assert [h["trained"] for h in history[1:]] == [3, 2, 3]
    assert (
        "round 2: the secure sum is over site0, site2, without site1 (no answer); the masks of "
        "site1 were removed with the survivors' shares"
    ) in outcome.notes
    # not retried mid-round (a restarted agent holds none of the round's secrets): left out,
    # and back, with fresh keys, for the next round
    assert _events(coordinator) == [
        (2, "site1", "failed"),
        (2, "site1", "left out"),
        (3, "site1", "restarted"),
    ]
    assert connectors["site1"].starts == 2
    rounds = coordinator.metrics["rounds"]
    assert [r["exchanges"] for r in rounds] == [4, 4, 4, 4]
    outcome_last = outcome.done.artifacts["model-last.safetensors"]
    assert outcome_last == reference.done.artifacts["model-last.safetensors"]


@pytest.mark.slow
def test_a_site_that_hangs_at_the_masked_step_is_cut_off_and_unmasked(plan: Path) -> None:
    reference, _, _ = _run(plan, {"site0": {(Task, 2, 1)}}, secure=False, min_sites=2)
    outcome, coordinator, _ = _run(
        plan,
        {},
        hangs={"site0": {(RelayShares, 2, 1)}},
        secure=True,
        min_sites=2,
        round_timeout=2.0,
    )
    assert _events(coordinator)[:2] == [(2, "site0", "timed out"), (2, "site0", "left out")]
    assert (3, "site0", "restarted") in _events(coordinator)
    assert any("the masks of site0 were removed" in n for n in outcome.notes)
    outcome_last = outcome.done.artifacts["model-last.safetensors"]
    assert outcome_last == reference.done.artifacts["model-last.safetensors"]


def test_a_site_lost_at_the_first_step_is_restarted_and_changes_nothing(plan: Path) -> None:
    clean, _, _ = _run(plan, {}, secure=True)
    outcome, coordinator, connectors = _run(
        plan, {"site2": {(SecureTask, 2, 1)}}, secure=True, retries=1
    )
    assert _events(coordinator) == [(2, "site2", "failed"), (2, "site2", "restarted")]
    assert connectors["site2"].starts == 2
    assert [h["trained"] for h in _secure_history(outcome)[1:]] == [3, 3, 3]
    outcome_last = outcome.done.artifacts["model-last.safetensors"]
    assert outcome_last == clean.done.artifacts["model-last.safetensors"]


def test_below_the_quorum_a_secure_round_fails_naming_it(plan: Path) -> None:
    faults = {"site1": {(RelayShares, 1, 1)}}
    with pytest.raises(
        AppError, match=r"round 1: 2 of the 3 sampled sites answered.*min_sites = 3"
    ):
        _run(plan, faults, secure=True, min_sites=3)


# -- what reaches the coordinator ---------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _floats(obj: Any, out: set[float]) -> set[float]:
    if isinstance(obj, dict):
        for v in obj.values():
            _floats(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _floats(v, out)
    elif isinstance(obj, float):
        out.add(obj)
    return out


def test_the_trace_of_a_secure_run_holds_no_sites_weights(plan: Path, tmp_path: Path) -> None:
    plain, _, _ = _run(plan, {}, secure=False, trace=tmp_path / "plain.jsonl")
    secure, _, _ = _run(plan, {}, secure=True, trace=tmp_path / "secure.jsonl")
    assert secure.done.artifacts == plain.done.artifacts  # the same weights at every site

    # each site's own weights and rows, per round, from the plaintext run's trace
    own: dict[tuple[str, int], tuple[int, np.ndarray]] = {}
    for line in _lines(tmp_path / "plain.jsonl"):
        if line["type"] == "reply" and line["round"] <= 3:
            body = line["message"]["payload"]
            w = body["weights"]
            own[line["site"], line["round"]] = (
                body["rows"],
                np.asarray(w["data"], dtype=w["dtype"]).reshape(w["shape"]),
            )
    assert len(own) == 9 and all(w.size > 50 for _, w in own.values())

    lines = _lines(tmp_path / "secure.jsonl")
    in_rounds = [m for m in lines if m["round"] is not None]
    assert {m["type"] for m in in_rounds} == {"keys", "shares", "masked", "reveal"}
    seen = _floats([m["message"] for m in in_rounds], set())
    words: dict[int, set[int]] = {}
    ranges: dict[int, list[tuple[int, int]]] = {}
    for m in in_rounds:
        if m["type"] == "masked":
            data = m["message"]["vector"]["data"]
            words.setdefault(m["round"], set()).update(w for row in data for w in row)
        if m["type"] == "keys":
            ranges.setdefault(m["round"], []).append((m["message"]["lsb"], m["message"]["msb"]))
    checked = 0
    for (site, round_), (rows, w) in own.items():
        scaled = rows * w.astype(np.float64)
        values = {float(v) for v in w.ravel()} | {float(v) for v in scaled.ravel()}
        assert not values & seen, site  # neither w_i nor n_i·w_i, as a number
        # nor any word of n_i·w_i encoded as the round's agreed encoding encodes it
        spec = FixedPoint.agree(ranges[round_], 3)
        encoded = set(spec.encode(scaled).ravel().tolist()) - {0, 2**64 - 1}
        assert encoded and not encoded & words[round_], site
        checked += 1
    assert checked == 9


@pytest.mark.slow
def test_a_site_process_that_dies_in_a_secure_round_is_left_out_and_the_run_completes(
    tmp_path: Path,
) -> None:
    from fedflow.runtime.run import run_study
    from fedflow.study import load_study

    from .test_faults_process import SIZES as PROCESS_SIZES
    from .test_faults_process import _acted, _events, _study

    path = _study(tmp_path, "die", at=2, min_sites=2)
    text = path.read_text()
    path.write_text(text.replace('app = "train"\n', 'app = "train"\nsecure = true\n', 1))
    study = load_study(path)
    assert study.secure
    run = run_study(study, out=tmp_path / "run", command=[], trace=True)
    assert run.status == "completed"
    assert len(_acted(tmp_path)) == 1
    events = _events(run.dir)
    victim = events[0][1]
    assert events[:2] == [(2, victim, "failed"), (2, victim, "left out")]
    assert (3, victim, "restarted") in events
    result = json.loads((run.dir / "result.json").read_text())["result"]
    assert [h["trained"] for h in result["history"][1:]] == [3, 2, 3]
    assert run.manifest["secure"] is True
    sites = list(blobs(PROCESS_SIZES))
    survivors = ", ".join(s for s in sites if s != victim)
    assert any("round 2: aggregated 2 of the 3 sampled sites" in n for n in run.notes)
    # it died computing its reply (the first step, before sharing keys): nothing to unmask
    assert f"round 2: the secure sum is over {survivors}, without {victim} (no answer)" in (
        run.notes
    )
    lines = _lines(run.dir / "trace.jsonl")
    assert {m["type"] for m in lines if m["round"] is not None} == {
        "keys",
        "shares",
        "masked",
        "reveal",
    }


def test_an_interrupted_secure_run_resumes_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_resume import _resume, _stop_after
    from .test_resume import _run as run_study_file

    folder = tmp_path / "study"
    folder.mkdir()
    write_plan(folder, MLP_PLAN)
    clients = []
    for name, table in blobs(SIZES).items():
        table.to_pandas().to_csv(folder / f"{name}.csv", index=False)
        clients.append(f'[[clients]]\nname = "{name}"\ndata = ["{name}.csv"]\n')
    study = folder / "study.toml"
    study.write_text(
        'name = "resume"\napp = "train"\nseed = 5\nsecure = true\n'
        '[params]\nplan = "plan.py"\ntarget = "label"\nrounds = 3\nlr = 0.1\n'
        'batch_size = 16\nmetric = "accuracy"\nstrategy = "fedadam"\nfraction = 0.7\n'
        + "".join(clients)
    )
    whole = run_study_file(study, tmp_path / "whole")
    assert whole.status == "completed" and whole.manifest["secure"] is True
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_study_file(study, out)
    run = _resume(out)
    assert run.status == "completed"
    for name in ("model-last.safetensors", "model-best.safetensors"):
        assert (out / name).read_bytes() == (whole.dir / name).read_bytes(), name
    result = json.loads((out / "result.json").read_text())["result"]
    assert result == json.loads((whole.dir / "result.json").read_text())["result"]
    assert all(isinstance(h["sites"], str) for h in result["history"][1:])
