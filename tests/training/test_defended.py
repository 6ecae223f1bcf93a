"""A defended site runs a training plan only from its own approved copy whose sha256 equals
that of the plan the coordinator sent; anything else is refused before the plan runs."""

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
