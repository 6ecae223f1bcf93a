"""SCAFFOLD with ``secure = true``: each site keeps its own control c_i and sends only n_i·w_i,
n_i·Δc_i (and the other terms of the round's sums) through the dropout-tolerant secure exchange;
the model is the plaintext run's, no site's control or control update reaches the coordinator,
and a site that drops out of a round's sum keeps its c_i (its update is simply missing from
c += Σ_{i∈S} n_i·Δc_i / Σ_i n_i)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow.runtime.simulate import simulate  # noqa: E402
from fedflow.secure import FixedPoint  # noqa: E402
from fedflow.training.weights import from_safetensors  # noqa: E402
from fedflow.wire import RelayShares, Task  # noqa: E402

from .helpers import MLP_PLAN, blobs, mlp_params, write_plan  # noqa: E402
from .test_site_state import restart_run  # noqa: E402

MODELS = ("model-last.safetensors", "model-best.safetensors")


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path, MLP_PLAN)


def test_secure_scaffold_gives_the_plaintext_model_bit_for_bit(plan: Path) -> None:
    sites = blobs([50, 40, 60])
    params = mlp_params(plan, strategy="scaffold", rounds=4, fraction=0.5)
    plain = simulate("train", params, sites, seed=3)
    secure = simulate("train", params, sites, seed=3, secure=True)
    history = secure.done.result["history"]
    assert all(isinstance(h["sites"], str) for h in history[1:])  # the secure formulation ran
    assert [h["trained"] for h in history[1:]] == [2, 2, 2, 2]  # 2 of 3 sampled each round
    assert len({tuple(h["sampled"]) for h in history[1:]}) > 1
    for name in MODELS:
        assert secure.done.artifacts[name] == plain.done.artifacts[name], name
    # SCAFFOLD did something: the model differs from FedAvg's
    fedavg = simulate("train", mlp_params(plan, rounds=4, fraction=0.5), sites, seed=3)
    assert fedavg.done.artifacts[MODELS[0]] != plain.done.artifacts[MODELS[0]]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _array(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(body["data"], dtype=body["dtype"]).reshape(body["shape"])


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


def test_no_sites_control_or_control_update_reaches_the_coordinator(
    plan: Path, tmp_path: Path
) -> None:
    plain, _ = restart_run(plan, tmp_path / "p", {}, trace=tmp_path / "plain.jsonl")
    secure, _ = restart_run(plan, tmp_path / "s", {}, secure=True, trace=tmp_path / "sec.jsonl")
    for name in MODELS:
        assert secure.done.artifacts[name] == plain.done.artifacts[name], name

    # each site's Δc_i per round from the plaintext trace; c_i from its own state files
    deltas: dict[tuple[str, int], tuple[int, np.ndarray]] = {}
    for line in _lines(tmp_path / "plain.jsonl"):
        if line["type"] == "reply" and line["round"] <= 4:
            body = line["message"]["payload"]
            deltas[line["site"], line["round"]] = (body["rows"], _array(body["control_delta"]))
    assert len(deltas) == 12
    own = []
    for path in sorted((tmp_path / "s").glob("*/state/*.safetensors")):
        own.append(from_safetensors(path.read_bytes(), str(path))[0]["control"])
    assert len(own) == 6 and all(np.abs(c).max() > 0 for c in own)  # rounds 3 and 4, 3 sites

    lines = _lines(tmp_path / "sec.jsonl")
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
    for control in own:
        assert not {float(v) for v in control} & seen
    for (site, round_), (rows, delta) in deltas.items():
        scaled = rows * delta
        assert not ({float(v) for v in delta} | {float(v) for v in scaled}) & seen, site
        spec = FixedPoint.agree(ranges[round_], 3)
        encoded = set(spec.encode(scaled).ravel().tolist()) - {0, 2**64 - 1}
        assert encoded and not encoded & words[round_], (site, round_)


def test_a_site_dropped_from_a_secure_sum_keeps_its_control_as_in_plaintext(
    plan: Path, tmp_path: Path
) -> None:
    # plaintext: site1 is lost in round 2 (no retry): the round aggregates the two others
    plain, _ = restart_run(plan, tmp_path / "p", {"site1": {(Task, 2)}}, retries=0, min_sites=2)
    assert any("round 2: aggregated without site1" in n for n in plain.notes)
    # secure: site1 trains round 2 (and writes its state of round 2), then dies before its
    # masked vector; it is left out of the sum and restarted for round 3, where it starts
    # from its state of round 1 — the last round whose update went into c
    secure, connectors = restart_run(
        plan, tmp_path / "s", {"site1": {(RelayShares, 2)}}, secure=True, min_sites=2
    )
    assert connectors["site1"].starts == 2
    assert any("the secure sum is over site0, site2, without site1" in n for n in secure.notes)
    history = secure.done.result["history"]
    assert [h["trained"] for h in history[1:]] == [3, 2, 3, 3]
    for name in MODELS:
        assert secure.done.artifacts[name] == plain.done.artifacts[name], name
