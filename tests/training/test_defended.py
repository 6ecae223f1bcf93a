"""A defended site runs a training plan only from its own approved copy whose sha256 equals
that of the plan the coordinator sent; anything else is refused before the plan runs. Its
SCAFFOLD state stays in its own outputs folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow._version import __version__  # noqa: E402
from fedflow.apps.base import decode_payload, encode_payload  # noqa: E402
from fedflow.apps.train import RoundReply, RoundTask  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
from fedflow.node.siteconfig import load_config  # noqa: E402
from fedflow.node.siteops import approve  # noqa: E402
from fedflow.training.plan import plan_hash  # noqa: E402
from fedflow.wire import (  # noqa: E402
    PROTOCOL_VERSION,
    Failure,
    Hello,
    Prepare,
    Prepared,
    Ready,
    Reply,
    Setup,
    Task,
)

from .helpers import MLP_PLAN, blobs  # noqa: E402

FEATURES = ["x0", "x1", "x2", "x3"]


@pytest.fixture()
def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The site's policy (one dataset), and a plan that leaves a mark when it runs."""
    blobs([40])["site0"].to_pandas().to_csv(tmp_path / "cohort.csv", index=False)
    policy = tmp_path / "site-policy.toml"
    policy.write_text(f'[datasets.cohort]\npath = "{tmp_path / "cohort.csv"}"\n')
    marker = tmp_path / "plan-ran"
    plan = tmp_path / "coordinator" / "plan.py"
    plan.parent.mkdir()
    plan.write_text(f"open({str(marker)!r}, 'a').write('ran')\n" + MLP_PLAN)
    return policy, plan, marker


def _prepare(policy: Path, code: str, sha: str) -> tuple[NodeAgent, object]:
    agent = NodeAgent("h", load_config(policy), owned=False)
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
    assert isinstance(agent.handle(Setup(dataset="cohort", min_count=5, seed=1)), Ready)
    params = {
        "plan": "/nowhere/plan.py",  # a defended site never opens a path the coordinator names
        "target": "label",
        "features": FEATURES,
        "metric": "accuracy",
        "plan_sha256": sha,
    }
    columns = {name: "numeric" for name in ["label", *FEATURES]}
    return agent, agent.handle(Prepare(app="train", params=params, columns=columns, code=code))


def test_an_unapproved_plan_is_refused_without_running(site: tuple[Path, Path, Path]) -> None:
    policy, plan, marker = site
    code = plan.read_text()
    _, reply = _prepare(policy, code, plan_hash(code.encode()))
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert "not approved here" in reply.message and plan_hash(code.encode()) in reply.message
    assert not marker.exists()


def test_an_approved_plan_runs_from_the_sites_own_copy(site: tuple[Path, Path, Path]) -> None:
    policy, plan, marker = site
    approve(plan, policy)
    code = plan.read_text()
    agent, reply = _prepare(policy, code, plan_hash(code.encode()))
    assert isinstance(reply, Prepared), reply
    weights = np.zeros(8 * 4 + 8 + 3 * 8 + 3, dtype=np.float32)
    task = Task(
        round=1, phase="round", payload=encode_payload(RoundTask(weights=weights, train=True))
    )
    answer = agent.handle(task)
    assert isinstance(answer, Reply), answer
    decoded = decode_payload(answer.payload, RoundReply)
    assert (
        decoded.rows == 32
        and decoded.weights is not None
        and decoded.weights.shape == weights.shape
    )
    assert marker.read_text() == "ran"  # the approved copy ran, once


def test_a_plan_other_than_the_approved_one_is_refused(site: tuple[Path, Path, Path]) -> None:
    policy, plan, marker = site
    approve(plan, policy)
    tampered = plan.read_text() + "\nimport os\n"
    _, reply = _prepare(policy, tampered, plan_hash(tampered.encode()))
    assert isinstance(reply, Failure) and reply.kind == "policy"
    # a coordinator claiming the approved hash for other code: the site hashes what it got
    _, reply = _prepare(policy, tampered, plan_hash(plan.read_bytes()))
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert not marker.exists()


def test_a_plan_path_without_code_is_never_run(site: tuple[Path, Path, Path]) -> None:
    """A coordinator that sends no code but names a plan file on the site's disk (with its true
    hash) is refused: a defended site runs only approved copies, never a path it is told."""
    policy, plan, marker = site
    sha = plan_hash(plan.read_bytes())
    agent = NodeAgent("h", load_config(policy), owned=False)
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
    assert isinstance(agent.handle(Setup(dataset="cohort", min_count=5, seed=1)), Ready)
    params = {"plan": str(plan), "target": "label", "features": FEATURES, "plan_sha256": sha}
    columns = {name: "numeric" for name in ["label", *FEATURES]}
    reply = agent.handle(Prepare(app="train", params=params, columns=columns, code=None))
    if not isinstance(reply, Failure):
        task = Task(round=1, phase="round", payload={})
        reply = agent.handle(task)
    assert isinstance(reply, Failure) and reply.kind == "policy", reply
    assert "none was sent" in reply.message
    assert not marker.exists()


def test_a_defended_sites_scaffold_state_stays_in_its_own_outputs_folder(
    site: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A ``fedflow node`` site keeps its SCAFFOLD control under its configured outputs folder
    (``<outputs>/<study>/state``); an agent started again reads it from there and answers as
    the agent that kept it in memory."""
    policy, plan, _ = site
    outputs = tmp_path / "site-outputs"
    policy.write_text(policy.read_text().replace("[datasets", f'outputs = "{outputs}"\n[datasets'))
    approve(plan, policy)
    code = plan.read_text()
    sha = plan_hash(code.encode())
    size = 8 * 4 + 8 + 3 * 8 + 3

    def started() -> NodeAgent:
        agent = NodeAgent("h", load_config(policy), owned=False)
        agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
        setup = Setup(dataset="cohort", min_count=5, seed=1, study="st")
        assert isinstance(agent.handle(setup), Ready)
        params = {
            "plan": "/nowhere/plan.py",
            "target": "label",
            "features": FEATURES,
            "metric": "accuracy",
            "plan_sha256": sha,
            "strategy": "scaffold",
        }
        columns = {name: "numeric" for name in ["label", *FEATURES]}
        prepare = Prepare(app="train", params=params, columns=columns, code=code)
        assert isinstance(agent.handle(prepare), Prepared)
        return agent

    def ask(agent: NodeAgent, round_: int, state_round: int) -> Reply | Failure:
        task = RoundTask(
            weights=np.full(size, 0.01 * round_, dtype=np.float32),
            train=True,
            control=np.full(size, 0.001 * round_),
            state_round=state_round,
            run="k1",
        )
        reply = agent.handle(Task(round=round_, phase="round", payload=encode_payload(task)))
        assert isinstance(reply, (Reply, Failure))
        return reply

    def weights(reply: Reply | Failure) -> np.ndarray:
        assert isinstance(reply, Reply), reply
        decoded = decode_payload(reply.payload, RoundReply)
        assert decoded.weights is not None
        return decoded.weights

    kept = started()
    weights(ask(kept, 1, 0))
    state = outputs / "st" / "state" / "train-k1-round-1.safetensors"
    assert state.is_file()
    in_memory = weights(ask(kept, 2, 1))
    from_file = weights(ask(started(), 2, 1))  # a new agent: its c_i of round 1 from the file
    assert np.array_equal(from_file, in_memory)
    fresh = weights(ask(started(), 2, 0))  # c_i = 0 instead: other weights
    assert not np.array_equal(fresh, in_memory)
    # told to start from round 0, the site keeps only that and round 2: round 1's file is gone
    assert not state.exists()
    refused = ask(started(), 2, 1)
    assert isinstance(refused, Failure) and refused.kind == "data"
    assert str(state) in refused.message and "is missing" in refused.message
