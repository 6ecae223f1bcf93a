"""A training run's checkpoint is made between rounds and written on a thread while the next
round's sites train: what is written is the state as it was (later rounds change the arrays in
place), a failed write is raised by the next checkpoint or at the run's end, the run's end waits
for the last one, and a run whose sites keep state (SCAFFOLD) writes it before going on."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedflow._atomic import atomic_write
from fedflow.results.rundir import RunDirectory

pytest.importorskip("safetensors")

from fedflow.training.app import CHECKPOINT  # noqa: E402
from fedflow.training.checkpoint import Checkpointer, load_checkpoint  # noqa: E402


def _state(round_: int, scaffold: bool = False) -> tuple[SimpleNamespace, dict[str, Any]]:
    meta: dict[str, Any] = {
        "params": {"rounds": 5, "metric": "loss"},
        "history": [{"round": 0, "global": {}}],
    }
    if scaffold:
        meta["state_rounds"] = {"a": 1}
    arrays = {"weights": np.arange(6, dtype=np.float32)}
    ctx = SimpleNamespace(round=round_, state={CHECKPOINT: {"arrays": arrays, "meta": meta}})
    return SimpleNamespace(ctx=ctx), arrays


class _Gate:
    """A write that waits until the test opens the gate, and says on which thread it ran."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.threads: list[str] = []

    def __call__(self, path: Path, pieces: list[bytes]) -> None:
        self.threads.append(threading.current_thread().name)
        assert self.open.wait(30)
        atomic_write(path, pieces)


def test_the_state_is_written_as_it_was_when_the_round_ended(tmp_path: Path) -> None:
    gate = _Gate()
    rd = RunDirectory(tmp_path / "run")
    hook = Checkpointer(rd, metrics_every=3600.0, background=0, write=gate)
    driver, arrays = _state(1)
    hook(driver, 1)  # returns at once: the write waits at the gate
    arrays["weights"][:] = -1.0  # the next round changes the weights in place
    driver.ctx.round = 2
    gate.open.set()
    hook.close()
    rounds, state = load_checkpoint(rd.path)
    assert rounds == 1
    assert state[CHECKPOINT]["arrays"]["weights"].tolist() == list(range(6))
    assert gate.threads == ["fedflow-checkpoint"]
    synced = RunDirectory(tmp_path / "synced")
    Checkpointer(synced, metrics_every=3600.0)(_state(1)[0], 1)
    assert (rd.path / "checkpoint.safetensors").read_bytes() == (
        synced.path / "checkpoint.safetensors"
    ).read_bytes()


def test_each_checkpoint_waits_for_the_one_before(tmp_path: Path) -> None:
    gate = _Gate()
    rd = RunDirectory(tmp_path / "run")
    hook = Checkpointer(rd, metrics_every=3600.0, background=0, write=gate)
    driver, _ = _state(1)
    hook(driver, 1)
    opener = threading.Timer(0.2, gate.open.set)
    opener.start()
    driver.ctx.round = 2
    hook(driver, 2)  # cannot start its write before round 1's is on disk
    assert gate.open.is_set()
    hook.close()
    assert load_checkpoint(rd.path)[0] == 2


def test_a_failed_write_is_raised_by_the_next_checkpoint_or_at_the_end(tmp_path: Path) -> None:
    def full(path: Path, pieces: list[bytes]) -> None:
        raise OSError(28, "No space left on device")

    rd = RunDirectory(tmp_path / "run")
    hook = Checkpointer(rd, metrics_every=3600.0, background=0, write=full)
    driver, _ = _state(1)
    hook(driver, 1)
    with pytest.raises(OSError, match="No space left"):
        hook(driver, 2)
    hook = Checkpointer(rd, metrics_every=3600.0, background=0, write=full)
    hook(driver, 1)
    with pytest.raises(OSError, match="No space left"):
        hook.close()
    hook.close()  # raised once


def test_a_checkpoint_below_the_size_is_written_before_the_hook_returns(tmp_path: Path) -> None:
    written: list[str] = []

    def record(path: Path, pieces: list[bytes]) -> None:
        written.append(threading.current_thread().name)
        atomic_write(path, pieces)

    rd = RunDirectory(tmp_path / "run")
    Checkpointer(rd, metrics_every=3600.0, background=1 << 20, write=record)(_state(1)[0], 1)
    assert written == [threading.current_thread().name]
    hook = Checkpointer(rd, metrics_every=3600.0, background=100, write=record)
    hook(_state(2)[0], 2)
    hook.close()
    assert written[1] == "fedflow-checkpoint" and load_checkpoint(rd.path)[0] == 2


def test_sites_that_keep_state_get_a_checkpoint_on_disk_before_the_next_round(
    tmp_path: Path,
) -> None:
    written: list[str] = []

    def record(path: Path, pieces: list[bytes]) -> None:
        written.append(threading.current_thread().name)
        atomic_write(path, pieces)

    rd = RunDirectory(tmp_path / "run")
    hook = Checkpointer(rd, metrics_every=3600.0, background=0, write=record)
    driver, _ = _state(1, scaffold=True)
    hook(driver, 1)
    assert written == [threading.current_thread().name]  # on this thread, before returning
    assert load_checkpoint(rd.path)[0] == 1
