"""More interruption points for ``fedflow resume`` (test_resume.py has: right after the checkpoint
of round 1, of round 3 and after the last validation, and a site lost mid-round): Ctrl-C in the
middle of a round while sites are training, and a run interrupted twice and resumed twice (SCAFFOLD,
whose sites keep their own controls, is in test_site_state.py). Each ends with the bytes of the
run left alone. In-process node agents reading the study's CSV files, each with its folder under
the run directory (``sites/<site>``) as a local site has."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from fedflow.connectors.memory import MemoryConnector  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
from fedflow.runtime.run import RunInterrupted, arun_study  # noqa: E402
from fedflow.study import load_study  # noqa: E402
from fedflow.training import checkpoint  # noqa: E402
from fedflow.wire import Task  # noqa: E402

from .helpers import MLP_PLAN, blobs, write_plan  # noqa: E402

ROUNDS = 4
MODELS = ("model-last.safetensors", "model-best.safetensors")


def _study(folder: Path, strategy: str) -> Path:
    folder.mkdir()
    write_plan(folder, MLP_PLAN)
    clients = []
    for name, table in blobs([50, 35, 60]).items():
        table.to_pandas().to_csv(folder / f"{name}.csv", index=False)
        clients.append(f'[[clients]]\nname = "{name}"\ndata = ["{name}.csv"]\n')
    (folder / "study.toml").write_text(
        'name = "resume-points"\napp = "train"\nseed = 11\n'
        f'[params]\nplan = "plan.py"\ntarget = "label"\nrounds = {ROUNDS}\nlr = 0.1\n'
        f'batch_size = 16\nmetric = "accuracy"\nstrategy = "{strategy}"\nfraction = 0.7\n'
        + "".join(clients)
    )
    return folder / "study.toml"


class CtrlC:
    """Site handlers that send SIGINT to this process — Ctrl-C at the coordinator — when
    ``site`` receives its task of round ``round_`` (after the sites before it in study order
    have had theirs), and leave that task unanswered; ``seen`` records the rounds each site
    was asked."""

    def __init__(self, at: tuple[str, int] | None = None) -> None:
        self.at = at
        self.seen: list[tuple[str, int]] = []

    def connectors(self, names: list[str], root: Path | None = None) -> dict[str, Any]:
        def handler(name: str) -> Any:
            agent = NodeAgent(name)

            def handle(message: Any) -> Any:
                if isinstance(message, Task):
                    self.seen.append((name, message.round))
                    if self.at == (name, message.round):
                        os.kill(os.getpid(), signal.SIGINT)
                        return None  # still training when the interruption lands
                return agent.handle(message)

            return handle

        return {
            n: MemoryConnector(
                n,
                handler=handler(n),
                output_dir=str(root / "sites" / n) if root is not None else None,
            )
            for n in names
        }


def _run(study_file: Path, out: Path, ctrl_c: CtrlC | None = None, **kwargs: Any) -> Any:
    study = load_study(study_file)
    names = [c.name for c in study.clients]
    conns = (ctrl_c or CtrlC()).connectors(names, out)  # local sites' folders: out/sites/<site>
    return asyncio.run(arun_study(study, out=out, connectors=conns, command=[], **kwargs))


def _resume(run_dir: Path, ctrl_c: CtrlC | None = None) -> Any:
    return _run(run_dir / "study.toml", run_dir, ctrl_c, resume=run_dir)


def _same_models(a: Path, b: Path) -> None:
    for name in MODELS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (
        json.loads((a / "result.json").read_text())["result"]
        == json.loads((b / "result.json").read_text())["result"]
    )


@pytest.mark.slow  # three runs; seconds each on a loaded machine
def test_ctrl_c_while_sites_train_resumes_from_the_last_round_to_the_same_bytes(
    tmp_path: Path,
) -> None:
    study = _study(tmp_path / "study", "fedavg")
    whole = _run(study, tmp_path / "whole").dir
    out = tmp_path / "cut"
    ctrl_c = CtrlC(at=("site2", 3))  # site0 and site1 have had their round-3 task
    with pytest.raises(RunInterrupted):
        _run(study, out, ctrl_c)
    assert ("site0", 3) in ctrl_c.seen and ("site1", 3) in ctrl_c.seen
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert checkpoint.load_checkpoint(out)[0] == 2  # round 3 was never aggregated
    again = CtrlC()
    assert _resume(out, again).status == "completed"
    assert min(r for _, r in again.seen) == 3  # the resumed run starts with round 3 again
    _same_models(out, whole)


def test_a_run_interrupted_twice_and_resumed_twice_ends_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _study(tmp_path / "study", "fedyogi")
    whole = _run(study, tmp_path / "whole").dir
    out = tmp_path / "twice"
    with pytest.raises(RunInterrupted):
        _run(study, out, CtrlC(at=("site1", 2)))
    assert checkpoint.load_checkpoint(out)[0] == 1
    real = checkpoint.Checkpointer.__call__

    def stop_after_3(self: Any, driver: Any, round_: int) -> None:
        real(self, driver, round_)
        if round_ == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpointer, "__call__", stop_after_3)
        with pytest.raises(KeyboardInterrupt):
            _resume(out)
    assert checkpoint.load_checkpoint(out)[0] == 3
    assert _resume(out).status == "completed"
    _same_models(out, whole)
    kept = sorted(p.name for p in (out / "attempts").iterdir())
    assert kept == ["1", "2"]
    for attempt in kept:
        manifest = json.loads((out / "attempts" / attempt / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
