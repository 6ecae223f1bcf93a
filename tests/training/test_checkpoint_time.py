"""The time a training run spends between two rounds (checkpoint and metrics.json) is recorded
per exchange in metrics.json's ``checkpoint_seconds``: no round's ``seconds`` includes it, and
benchmarks/train_bench.py adds it to the coordinator's overhead per round; the coordinator's own
CPU from one checkpoint to the next is ``coordinator_cpu_seconds``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedflow.results.rundir import RunDirectory


def _checkpointing(
    folder: Path, metrics_every: float
) -> tuple[RunDirectory, dict[str, Any], SimpleNamespace, Any]:
    """A run directory, a training state (meta and the driver's context at round 1) and its
    Checkpointer, called once for round 1."""
    pytest.importorskip("safetensors")
    from fedflow.training.app import CHECKPOINT
    from fedflow.training.checkpoint import Checkpointer

    rd = RunDirectory(folder / "run")
    meta: dict[str, Any] = {
        "params": {"rounds": 3, "metric": "loss"},
        "history": [{"round": 0, "global": {}}],
    }
    ctx = SimpleNamespace(
        round=1, state={CHECKPOINT: {"arrays": {"weights": np.ones(4)}, "meta": meta}}
    )
    hook = Checkpointer(rd, metrics_every=metrics_every)
    hook(SimpleNamespace(ctx=ctx), 1)
    return rd, meta, ctx, hook


def test_each_checkpoint_records_its_time_and_the_file_is_whole(tmp_path: Path) -> None:
    from fedflow.training.app import CHECKPOINT
    from fedflow.training.checkpoint import load_checkpoint

    rd, _, ctx, hook = _checkpointing(tmp_path, metrics_every=0.0)
    ctx.round = 2
    hook(SimpleNamespace(ctx=ctx), 2)
    spent = rd.metrics["checkpoint_seconds"]
    assert len(spent) == 2 and all(s > 0 for s in spent)
    on_disk = json.loads((rd.path / "metrics.json").read_text())["checkpoint_seconds"]
    assert len(on_disk) == 2 and on_disk[0] == spent[0]
    # the coordinator's CPU between two checkpoints: one figure from the second one on
    (cpu,) = rd.metrics["coordinator_cpu_seconds"]
    assert 0 < cpu < 60
    rounds, state = load_checkpoint(rd.path)
    assert rounds == 2 and state[CHECKPOINT]["arrays"]["weights"].tolist() == [1.0] * 4


def test_metrics_json_is_rewritten_at_most_every_metrics_every_seconds(tmp_path: Path) -> None:
    """The checkpoint is written after every round; metrics.json after the first round, then not
    again within ``metrics_every`` seconds (the run writes it whole when it ends)."""
    from fedflow.training.checkpoint import load_checkpoint

    rd, meta, ctx, hook = _checkpointing(tmp_path, metrics_every=3600.0)
    for k in (2, 3):
        ctx.round = k
        meta["history"].append({"round": k - 1, "global": {"loss": 1.0 / k}})
        hook(SimpleNamespace(ctx=ctx), k)
        assert load_checkpoint(rd.path)[0] == k  # every round's checkpoint
    on_disk = json.loads((rd.path / "metrics.json").read_text())
    assert len(on_disk["checkpoint_seconds"]) == 1 and len(on_disk["training"]) == 1
    assert len(rd.metrics["checkpoint_seconds"]) == 3  # kept for the run's last write
    rd.write_metrics()
    assert json.loads((rd.path / "metrics.json").read_text())["training"] == meta["history"]


def test_the_state_travels_as_bytes_and_checkpoints_of_earlier_versions_still_load(
    tmp_path: Path,
) -> None:
    """The checkpoint's JSON document is a byte tensor (its escaping into the file's header grew
    with the history); a checkpoint that holds it in the metadata, as before, loads the same."""
    import struct

    from fedflow.training.app import CHECKPOINT
    from fedflow.training.checkpoint import _KEY, load_checkpoint
    from fedflow.training.weights import to_safetensors

    rd, meta, _, _ = _checkpointing(tmp_path, metrics_every=0.0)
    data = (rd.path / "checkpoint.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    assert header["__metadata__"] == {_KEY: "fedflow-checkpoint"}  # names the tensor
    assert header["fedflow-checkpoint"]["dtype"] == "U8"
    rounds, state = load_checkpoint(rd.path)
    assert rounds == 1 and state[CHECKPOINT]["meta"] == meta
    assert set(state[CHECKPOINT]["arrays"]) == {"weights"}  # the document is not a weight

    doc = json.dumps({"rounds": 1, "state": meta})
    old = tmp_path / "old"
    old.mkdir()
    (old / "checkpoint.safetensors").write_bytes(
        to_safetensors({"weights": np.ones(4)}, {_KEY: doc})
    )
    old_rounds, old_state = load_checkpoint(old)
    assert old_rounds == rounds and old_state[CHECKPOINT]["meta"] == meta
    assert old_state[CHECKPOINT]["arrays"]["weights"].tolist() == [1.0] * 4
