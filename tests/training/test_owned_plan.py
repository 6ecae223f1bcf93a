"""An owned site (local process, SSH) runs the training plan from the source the coordinator
sent, written to its run folder once its sha256 is the study's: the path the study names on the
coordinator's machine need not exist at the site. A defended site never runs the text sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow._version import __version__  # noqa: E402
from fedflow.apps.base import decode_payload, encode_payload  # noqa: E402
from fedflow.apps.train import RoundReply, RoundTask  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
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
SIZE = 8 * 4 + 8 + 3 * 8 + 3


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "site0.csv"
    blobs([40])["site0"].to_pandas().to_csv(path, index=False)
    return path


def _agent(
    data: Path, plan_path: str, code: str, sha: str, outputs: Path | None
) -> tuple[NodeAgent, Prepared | Failure]:
    agent = NodeAgent("vienna", owned=True)
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="vienna"))
    setup = Setup(data=[str(data)], min_count=5, seed=3, outputs=str(outputs) if outputs else None)
    assert isinstance(agent.handle(setup), Ready)
    params = {
        "plan": plan_path,
        "target": "label",
        "features": FEATURES,
        "metric": "accuracy",
        "plan_sha256": sha,
    }
    columns = {name: "numeric" for name in ["label", *FEATURES]}
    reply = agent.handle(Prepare(app="train", params=params, columns=columns, code=code))
    assert isinstance(reply, (Prepared, Failure))
    return agent, reply


def _rounds(agent: NodeAgent) -> list[np.ndarray]:
    out = []
    weights = np.full(SIZE, 0.01, dtype=np.float32)
    for k in (1, 2):
        task = RoundTask(weights=weights, train=True)
        reply = agent.handle(Task(round=k, phase="round", payload=encode_payload(task)))
        assert isinstance(reply, Reply), reply
        decoded = decode_payload(reply.payload, RoundReply)
        assert decoded.weights is not None
        weights = decoded.weights
        out.append(weights)
    return out


def test_an_owned_site_trains_from_the_plan_sent_when_the_studys_path_is_absent(
    tmp_path: Path, data: Path
) -> None:
    marker = tmp_path / "plan-ran"
    code = f"open({str(marker)!r}, 'a').write('ran')\n" + MLP_PLAN
    sha = plan_hash(code.encode())
    plan = tmp_path / "coordinator" / "plan.py"
    plan.parent.mkdir()
    plan.write_text(code, encoding="utf-8")
    # the reference: an in-process site without a run folder reads the file the study names
    reference, reply = _agent(data, str(plan), code, sha, None)
    assert isinstance(reply, Prepared), reply
    expected = _rounds(reference)
    # the coordinator's copy moved away: a site with a run folder trains from the text sent
    plan.rename(tmp_path / "moved.py")
    marker.unlink()
    run_folder = tmp_path / "site-run" / "out"
    agent, reply = _agent(data, str(plan), code, sha, run_folder)
    assert isinstance(reply, Prepared), reply
    got = _rounds(agent)
    for a, b in zip(got, expected, strict=True):
        assert a.tobytes() == b.tobytes()
    copy = run_folder / "plan" / f"{sha.partition(':')[2]}.py"
    assert copy.read_bytes() == code.encode()
    assert marker.read_text() == "ran"  # the copy ran, once


def test_an_owned_site_refuses_a_plan_whose_hash_is_not_the_studys(
    tmp_path: Path, data: Path
) -> None:
    marker = tmp_path / "plan-ran"
    code = f"open({str(marker)!r}, 'a').write('ran')\n" + MLP_PLAN
    study_hash = plan_hash(MLP_PLAN.encode())  # the study names one plan, another was sent
    run_folder = tmp_path / "site-run" / "out"
    _, reply = _agent(data, "/nowhere/plan.py", code, study_hash, run_folder)
    assert isinstance(reply, Failure) and reply.kind == "policy", reply
    assert "\n" not in reply.message
    assert "site 'vienna'" in reply.message
    assert plan_hash(code.encode()) in reply.message and study_hash in reply.message
    assert not (run_folder / "plan").exists()  # nothing written, nothing run
    assert not marker.exists()
