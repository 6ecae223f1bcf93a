"""Checkpoints and ``fedflow resume``: a training run interrupted after any round, or failing
mid-round when a site is lost, ends — once resumed — with bytes identical to the run left alone.

Runs go through ``arun_study`` (run directory, manifest, checkpoints) with in-process node agents
reading the study's CSV files, so the suite needs no forked processes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from fedflow.connectors.memory import MemoryConnector  # noqa: E402
from fedflow.errors import AppError, SiteError  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
from fedflow.results.predict import predict  # noqa: E402
from fedflow.runtime.run import arun_study  # noqa: E402
from fedflow.study import load_study  # noqa: E402
from fedflow.training import checkpoint  # noqa: E402
from fedflow.wire import Task  # noqa: E402

from .helpers import MLP_PLAN, blobs, write_plan  # noqa: E402

ROUNDS = 4


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    folder = tmp_path / "study"
    folder.mkdir()
    write_plan(folder, MLP_PLAN)
    clients = []
    for name, table in blobs([50, 35, 60]).items():
        table.to_pandas().to_csv(folder / f"{name}.csv", index=False)
        clients.append(f'[[clients]]\nname = "{name}"\ndata = ["{name}.csv"]\n')
    (folder / "study.toml").write_text(
        'name = "resume"\napp = "train"\nseed = 5\n'
        f'[params]\nplan = "plan.py"\ntarget = "label"\nrounds = {ROUNDS}\nlr = 0.1\n'
        'batch_size = 16\nmetric = "accuracy"\nstrategy = "fedadam"\nfraction = 0.7\n'
        + "".join(clients)
    )
    return folder / "study.toml"


def _connectors(names: list[str], fail: tuple[str, int] | None = None) -> dict[str, Any]:
    def handler(name: str) -> Any:
        agent = NodeAgent(name)

        def handle(message: Any) -> Any:
            if fail == (name, getattr(message, "round", None)) and isinstance(message, Task):
                raise SiteError("lost", site=name)  # the site's process dies mid-round
            return agent.handle(message)

        return handle

    return {n: MemoryConnector(n, handler=handler(n)) for n in names}


def _run(study_file: Path, out: Path | None = None, **kwargs: Any) -> Any:
    study = load_study(study_file)
    names = [c.name for c in study.clients]
    fail = kwargs.pop("fail", None)
    return asyncio.run(
        arun_study(study, out=out, connectors=_connectors(names, fail), command=[], **kwargs)
    )


def _resume(run_dir: Path) -> Any:
    return _run(run_dir / "study.toml", resume=run_dir)


def _stop_after(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    real = checkpoint.Checkpointer.__call__

    def interrupting(self: Any, driver: Any, round_: int) -> None:
        real(self, driver, round_)
        if round_ == stop:
            raise KeyboardInterrupt  # as Ctrl-C right after the checkpoint of round `stop`

    monkeypatch.setattr(checkpoint.Checkpointer, "__call__", interrupting)


@pytest.fixture()
def uninterrupted(study: Path, tmp_path: Path) -> Path:
    run = _run(study, tmp_path / "whole")
    assert run.status == "completed"
    return run.dir


@pytest.mark.parametrize("stop", [1, 3, ROUNDS + 1])
def test_resume_after_an_interruption_ends_with_the_same_bytes(
    study: Path, tmp_path: Path, uninterrupted: Path, monkeypatch: pytest.MonkeyPatch, stop: int
) -> None:
    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _stop_after(patch, stop)
        with pytest.raises(KeyboardInterrupt):
            _run(study, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert not (out / "model-last.safetensors").exists()
    saved = checkpoint.load_checkpoint(out)
    assert saved[0] == stop
    run = _resume(out)
    assert run.status == "completed"
    for name in ("model-last.safetensors", "model-best.safetensors"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    whole = json.loads((uninterrupted / "result.json").read_text())["result"]
    assert json.loads((out / "result.json").read_text())["result"] == whole
    # the interrupted attempt's manifest and logs were kept aside
    kept = json.loads((out / "attempts" / "1" / "manifest.json").read_text())
    assert kept["status"] == "interrupted"


def test_checkpoints_written_on_a_thread_resume_to_the_same_bytes(
    study: Path, tmp_path: Path, uninterrupted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every checkpoint written while the next round trains (as a model of a megabyte or more
    is): Ctrl-C right after round 2's leaves that checkpoint whole on disk, and the resumed run
    ends with the bytes of the run left alone."""
    monkeypatch.setattr(checkpoint, "BACKGROUND_BYTES", 0)
    real = checkpoint.atomic_write

    def slow(path: Path, data: Any) -> None:  # a disk slower than the rounds
        time.sleep(0.2)
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", slow)
    out = tmp_path / "threaded"
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            _run(study, out)
    assert checkpoint.load_checkpoint(out)[0] == 2
    assert _resume(out).status == "completed"
    assert checkpoint.load_checkpoint(out)[0] == ROUNDS + 1  # the last one, waited for
    for name in ("model-last.safetensors", "model-best.safetensors"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name


def test_a_site_lost_mid_round_resumes_from_the_last_checkpoint(
    study: Path, tmp_path: Path
) -> None:
    """Every site is needed (min_sites = 3): a site lost in round 3 ends the run; resumed, it
    ends with the bytes of the run that lost nothing."""
    strict = study.with_name("strict.toml")
    strict.write_text(
        study.read_text().replace("fraction = 0.7\n", "fraction = 0.7\nmin_sites = 3\n")
    )
    whole = _run(strict, tmp_path / "strict-whole")
    out = tmp_path / "lost"
    with pytest.raises(AppError, match="round 3: 2 of the 3 sampled sites answered"):
        _run(strict, out, fail=("site1", 3))
    assert checkpoint.load_checkpoint(out)[0] == 2
    assert _resume(out).status == "completed"
    name = "model-last.safetensors"
    assert (out / name).read_bytes() == (whole.dir / name).read_bytes()


def test_resume_refuses_a_changed_plan(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "changed"
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            _run(study, out)
    plan = study.parent / "plan.py"
    plan.write_text(plan.read_text() + "\n# edited\n")
    from fedflow.errors import FedflowError

    with pytest.raises(FedflowError, match="has hash"):
        _resume(out)


def test_a_run_directory_predicts_with_its_best_model(uninterrupted: Path, study: Path) -> None:
    import importlib.util

    import numpy as np
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    data = study.parent / "site0.csv"
    table = predict(uninterrupted, [data], out=uninterrupted / "pred.csv")
    # the same model built independently: the plan imported, the weights read by safetensors
    spec = importlib.util.spec_from_file_location("plan_copy", uninterrupted / "plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.model()
    model.load_state_dict(load_file(uninterrupted / "model-best.safetensors"))
    model.eval()
    frame = pd.read_csv(data, float_precision="round_trip")
    x = torch.tensor(frame[["x0", "x1", "x2", "x3"]].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        out = model(x).numpy().astype(np.float64)
    np.testing.assert_array_equal(table["prediction"], out.argmax(1))
    for j in range(3):
        # float32 sums in another order (memory layout) differ in the last bit
        np.testing.assert_allclose(table[f"output_{j}"], out[:, j], rtol=1e-5, atol=1e-6)
    written = pd.read_csv(uninterrupted / "pred.csv")
    assert list(written.columns) == ["prediction", "output_0", "output_1", "output_2"]
    assert len(written) == 50
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["code_sha256"] == manifest["params"]["plan_sha256"]
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert [h["round"] for h in metrics["training"]] == list(range(ROUNDS + 1))


def test_compare_trains_the_plan_centrally_and_sets_both_metrics_side_by_side(
    study: Path, tmp_path: Path
) -> None:
    import pandas as pd

    from fedflow.apps import get_app

    run = _run(study, tmp_path / "cmp", compare=True)
    (item,) = run.comparison["items"]
    assert item["path"] == "last.accuracy"
    assert item["federated"] == run.result["last"]["accuracy"]
    # the reference is the plan trained on the pooled rows: the same value when trained again
    app = get_app("train")
    params = app.parse_params(run.params)
    pooled = pd.concat(
        [pd.read_csv(study.parent / f"site{i}.csv") for i in range(3)], ignore_index=True
    )
    again = app.centralized_seeded(pooled, params, 5)  # the study's seed
    assert again["last"]["accuracy"] == item["centralized"]
    assert 0 < again["last_train_loss"] < 2
    # the seed is the study's: another one builds, holds out and shuffles differently
    other = app.centralized_seeded(pooled, params, 6)
    assert other["last_train_loss"] != again["last_train_loss"]
