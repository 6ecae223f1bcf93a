"""Checkpoints: after every round the coordinator's whole training state, atomically, in the run
directory (``checkpoint.safetensors``), and what ``fedflow resume RUN_DIR`` reads back.

The file holds only global state: the app's arrays (global weights, best weights, the server
optimiser's moments, SCAFFOLD's global control c) as safetensors and, in its metadata, the rounds
done and the app's JSON state (parameters with the plan's hash, seed, sites, history of metrics,
the sampling of every round, the best round, and for SCAFFOLD the run's key and the round each
site's state starts from). Every random stream (validation split, shuffling, dropout, sampling)
is derived from the study's seed, the site and the round. What only a site may know — SCAFFOLD's
control c_i — each site keeps in its state folder (``sites/<site>/state/`` for local sites), one
file per round; a resumed run names the round each site starts from, and the site refuses, in
one line naming the file, when that file is missing or corrupt.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedflow._atomic import atomic_write
from fedflow.errors import DataError, StudyError
from fedflow.results.rundir import GrowingList, RunDirectory, encode_object
from fedflow.training.app import CHECKPOINT
from fedflow.training.weights import from_safetensors, safetensors_parts

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpointer",
    "load_checkpoint",
    "restore_site_state",
    "set_aside_attempt",
]

CHECKPOINT_FILE = "checkpoint.safetensors"
_KEY = "fedflow-checkpoint"
_DOC = "fedflow-checkpoint"
"""The tensor (bytes, U8) holding the checkpoint's JSON document; the metadata entry ``_KEY``
names it. As a metadata string the document was escaped into the file's JSON header at every
round, a cost that grew with the history (``to_safetensors`` 0.5-0.8 ms for the 100 kB document
of 10 sites × 40 rounds, 3.3-4.1 ms for one four times as long; 0.4 and 1.5 ms as bytes). Checkpoints written before hold the document in the metadata."""


def _compact(value: Any) -> str:
    """The checkpoint's JSON: compact, NaN kept (a diverged loss is state too)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else "-"


BACKGROUND_BYTES = 1 << 20
"""A training run's checkpoint of at least this size is written on a thread while the next round
trains. Measured on 2 cores: a 9 MB checkpoint (1.1M float32 weights, 3 sites) held each round
up 14-25 ms when written in line, 2 ms on a thread; the digits MLP's 60-90 kB at 10 sites
cost more on a thread (rounds 2-21 0.84 s against 0.78 s, the coordinator's CPU 5.6 against 4.3
ms a round: the thread's start, join and GIL hand-overs)."""

METRICS_EVERY = 1.0
"""Seconds between two writes of metrics.json during a training run's rounds (the checkpoint is
written after every round; the run writes metrics.json whole when it ends, however it ends)."""


class Checkpointer:
    """The coordinator's ``after_round`` hook for training runs: write the checkpoint after every
    round, metrics.json with the training metrics after the first round and then at most every
    ``metrics_every`` seconds (a coordinator killed outright leaves the checkpoint of its last
    round and a metrics.json at most that old; its rewrite cost grows with the rounds, and it
    was a fifth of the coordinator's CPU per round at 10 sites × 20 rounds), and one progress
    line.

    ``background`` (bytes, or None for never): a checkpoint of at least that size is made
    between rounds but written and fsynced on a thread while the next round's sites train; the
    next checkpoint, and ``close``, wait for it first and raise its error. A coordinator killed
    during that write resumes from the round before, with the same final bytes. Not when sites
    keep state (SCAFFOLD): a site prunes its state of the round before as soon as it has
    trained the next one, so that checkpoint must be on disk before the next round starts."""

    def __init__(
        self,
        rundir: RunDirectory,
        say: Callable[[str], None] | None = None,
        metrics_every: float = METRICS_EVERY,
        *,
        background: int | None = None,
        write: Callable[[Path, list[bytes]], None] | None = None,
    ) -> None:
        self.rundir = rundir
        self.path = rundir.path / CHECKPOINT_FILE
        self.say = say
        self.metrics_every = metrics_every
        self.background = background
        self.write = write or _write
        """Writes the file whole or not at all (``atomic_write``; tests inject a slow or failing one)."""
        self._metrics_written: float | None = None
        self._cpu: float | None = None
        self._history = GrowingList(_compact)
        """The history's settled entries, encoded once (its JSON grows by a round at a time)."""
        self._writing: threading.Thread | None = None
        self._failed: BaseException | None = None

    def __call__(self, driver: Any, round_: int) -> None:
        ctx = driver.ctx
        saved = ctx.state.get(CHECKPOINT) if ctx is not None else None
        if saved is None:
            return
        started = time.perf_counter()
        self.wait()
        meta = saved["meta"]
        grown = {"history": self._history} if isinstance(meta.get("history"), list) else {}
        state = encode_object(meta, _compact, grown)
        doc = f'{{"rounds":{_compact(ctx.round)},"state":{state}}}'
        arrays = {**saved["arrays"], _DOC: np.frombuffer(doc.encode(), dtype=np.uint8)}
        pieces = safetensors_parts(arrays, {_KEY: _DOC})  # copies: later rounds may change them
        size = sum(len(p) for p in pieces)
        if self.background is not None and size >= self.background and "state_rounds" not in meta:
            self._writing = threading.Thread(
                target=self._write_aside, args=(pieces,), name="fedflow-checkpoint", daemon=True
            )
            self._writing.start()
        else:
            self.write(self.path, pieces)
        self.rundir.metrics["training"] = meta["history"]
        # between two rounds, so no round's "seconds" counts it (benchmarks add it to overhead)
        spent = self.rundir.metrics.setdefault("checkpoint_seconds", [])
        spent.append(time.perf_counter() - started)
        written = self._metrics_written
        if written is None or started - written >= self.metrics_every:
            self.rundir.write_metrics()
            self._metrics_written = time.perf_counter()
            spent[-1] = self._metrics_written - started  # metrics.json included (the next has it)
        # the coordinator's own CPU from the end of the last checkpoint to the end of this one:
        # a round's encoding, decoding, aggregation, checkpoint (it waits for sites without CPU)
        cpu, self._cpu = self._cpu, time.process_time()
        if cpu is not None:
            self.rundir.metrics.setdefault("coordinator_cpu_seconds", []).append(self._cpu - cpu)
        if self.say is not None:
            self.say(progress_line(meta, ctx.round))

    def _write_aside(self, pieces: list[bytes]) -> None:
        try:
            self.write(self.path, pieces)
        except BaseException as exc:  # raised by the next checkpoint or close
            self._failed = exc

    def wait(self) -> None:
        """Wait for a checkpoint being written in the background; raise its error, if any."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.join()
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    close = wait
    """At the run's end, however it ends: the last checkpoint on disk (or its error raised)."""


def _write(path: Path, pieces: list[bytes]) -> None:
    atomic_write(path, pieces)  # looked up when called (a test may slow it down)


def progress_line(meta: dict[str, Any], exchange: int) -> str:
    """One line after exchange ``exchange``: round k/N, training loss, and the validation metric
    of the previous global model (the one this exchange validated)."""
    params = meta["params"]
    rounds, metric = params["rounds"], params["metric"]
    history = meta["history"]
    validated = history[exchange - 1]["global"].get(metric) if exchange - 1 < len(history) else None
    if exchange > rounds:
        return f"validated the last model: {metric} {_fmt(validated)}"
    loss = history[exchange]["train_loss"] if exchange < len(history) else None
    return (
        f"round {exchange}/{rounds}: train loss {_fmt(loss)}, "
        f"{metric} of round {exchange - 1}'s model {_fmt(validated)}"
    )


def load_checkpoint(run_dir: Path) -> tuple[int, dict[str, Any]]:
    """Return the rounds done and the app state saved in ``run_dir``'s checkpoint; StudyError
    when there is none, DataError when it is unreadable."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise StudyError(f"{run_dir}: no {CHECKPOINT_FILE} (only training runs can be resumed)")
    arrays, metadata = from_safetensors(path.read_bytes(), str(path))
    try:
        text = metadata[_KEY]
        if text == _DOC:  # the document in its tensor (else: in the metadata, as before)
            text = arrays.pop(_DOC).tobytes().decode("utf-8")
        doc = json.loads(text)
        rounds, meta = int(doc["rounds"]), doc["state"]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a fedflow checkpoint ({exc})", file=str(path)) from None
    return rounds, {CHECKPOINT: {"arrays": arrays, "meta": meta}}


def set_aside_attempt(run_dir: Path) -> Path:
    """Move what the interrupted attempt wrote (manifest, metrics, logs, trace, the local sites'
    folders with their state) into ``attempts/<n>/`` so that resuming loses nothing; return that
    folder (``restore_site_state`` brings the sites' state back once the run folder is ready)."""
    attempts = Path(run_dir) / "attempts"
    n = 1
    while (attempts / str(n)).exists():
        n += 1
    target = attempts / str(n)
    target.mkdir(parents=True)
    names = ("manifest.json", "metrics.json", "trace.jsonl", "study.toml", "study.original.toml")
    for name in (*names, "logs", "sites"):
        source = Path(run_dir) / name
        if source.exists():
            shutil.move(str(source), str(target / name))
    shutil.copy2(Path(run_dir) / CHECKPOINT_FILE, target / CHECKPOINT_FILE)
    return target


def restore_site_state(run_dir: Path) -> list[Path]:
    """Copy the local sites' state folders (``sites/<site>/state``) of the latest attempt set
    aside that has any back into the run folder, for the resumed run's sites (an attempt that
    ended before its sites started has none); return the folders copied."""
    attempts = Path(run_dir) / "attempts"
    numbered = (
        sorted((int(p.name) for p in attempts.iterdir() if p.name.isdigit()), reverse=True)
        if attempts.is_dir()
        else []
    )
    for n in numbered:
        states = [
            s
            for s in sorted((attempts / str(n) / "sites").glob("*/state"))
            if s.is_dir() and not s.is_symlink()
        ]
        if not states:
            continue
        copied = []
        for state in states:
            target = Path(run_dir) / "sites" / state.parent.name / "state"
            shutil.copytree(state, target, symlinks=True, dirs_exist_ok=True)
            copied.append(target)
        return copied
    return []
