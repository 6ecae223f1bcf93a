"""fedflow's `app = "train"` beside Flower's simulation: the digits MLP, FedAvg, n sites, 20 rounds,
IID sites and a Dirichlet label skew, and both beside the same model trained centrally.

    bash benchmarks/peers/setup_flower.sh        # once: Flower's own venv, outside the repo
    python benchmarks/training_vs_flower.py      # 3 and 10 sites x 20 rounds, IID and α = 0.5
    python benchmarks/training_vs_flower.py --sites 3 --split iid --repeat 3
    python benchmarks/training_vs_flower.py --only flower     # or --only fedflow

Both train benchmarks/peers/digits_plan.py (64-64-10 MLP, cross-entropy, SGD) on the same files
(benchmarks/peers/digits_data.py: scikit-learn's digits, 20 % held out as a central test set, the
rest dealt IID to the sites, or, with the Dirichlet split, each digit's rows dealt by shares drawn
from Dir(α), benchmarks/train_bench.py's write_dirichlet), seed 42, 1 local epoch of minibatches of
32, lr 0.1, 20 % of each site's rows held out for validation, every site in every round. Flower's
client draws every random stream as fedflow does (initial weights, held-out rows, minibatch
order: see flower_digits.py), so the two run the same training; "largest weight difference"
shows how far apart their final weights are. For each site count and split the two run one after
the other (fedflow first), `--repeat` times, alternately.

- fedflow: `fedflow run` on local sites; figures from the run's metrics.json. Each exchange
  validates the global model, trains and validates the site's own model (OpenFL's three tasks);
  exchange 21 only validates the final model. Test accuracy: model-last.safetensors loaded into
  the plan's model, scored here on test.csv.
- Flower: benchmarks/peers/flower_digits.py in Flower's venv (simulation engine, Ray, 2 CPUs):
  each round trains every client, then every client evaluates the new global model.
- centralized: the plan trained here on the union of the sites' training rows (the rows the
  federated runs train on) for rounds × local_epochs epochs, same batch size, lr and initial
  weights; validated on the union of the sites' held-out rows (the rows the federated validation
  pools) and scored on the same test set.

"round" is the median over rounds 2..20 (round 1 carries the sites' start); "overhead" is a round
less the slowest site's own compute (fedflow: its compute_seconds, plus the checkpoint and
metrics.json written before the next round, metrics.json's checkpoint_seconds; Flower: slowest
training plus slowest evaluation as the clients timed them); fedflow's "coordinator CPU" is its
coordinator process's own CPU per round (coordinator_cpu_seconds); "rounds 2–20 / their
compute" is those rounds summed over the slowest site's compute summed. Bytes are per site and
round, both directions. Peak memory: fedflow's per site process; Flower's per Ray actor (an actor
runs many clients in turn). Set FEDFLOW_FLOWER_VENV when the venv is not at
~/.cache/fedflow/peers/flower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path.insert(0, str(PEERS))

import digits_data  # noqa: E402
import numpy as np  # noqa: E402
from train_bench import write_dirichlet  # noqa: E402

SETTINGS = {"local_epochs": 1, "batch_size": 32, "lr": 0.1, "validation": 0.2}


def flower_python() -> Path:
    venv = os.environ.get("FEDFLOW_FLOWER_VENV", str(Path.home() / ".cache/fedflow/peers/flower"))
    return Path(venv) / "bin" / "python"


def study_text(sites: int, rounds: int, seed: int) -> str:
    text = (
        f'name = "digits-bench"\napp = "train"\nseed = {seed}\n[params]\n'
        f'plan = "digits_plan.py"\ntarget = "{digits_data.TARGET}"\nrounds = {rounds}\n'
        f'metric = "accuracy"\nbetter = "higher"\n'
    )
    text += "".join(f"{k} = {v}\n" for k, v in SETTINGS.items())
    for i in range(1, sites + 1):
        text += f'[[clients]]\nname = "site{i:02d}"\ndata = ["site{i:02d}.csv"]\n'
    return text


def test_accuracy(run: Path, test: Path) -> float:
    """Accuracy of run/model-last.safetensors (the plan's model) on the central test set."""
    import digits_plan
    import torch
    from safetensors.torch import load_file

    model = digits_plan.model()
    model.load_state_dict(load_file(str(run / "model-last.safetensors")))
    model.eval()
    x, y = digits_data.read(test)
    with torch.no_grad():
        return digits_plan.metrics(model(torch.from_numpy(x)), torch.from_numpy(y))["accuracy"]


def flat_weights(path: Path) -> np.ndarray:
    """The weights of a model-last.safetensors, flat in the plan's state_dict order."""
    import digits_plan
    from safetensors.numpy import load_file

    named = load_file(str(path))
    return np.concatenate([named[k].ravel() for k in digits_plan.model().state_dict()])


def centralized(data: Path, sites: int, rounds: int, seed: int) -> dict[str, Any]:
    """The plan trained on the union of the sites' training rows for rounds × local_epochs
    epochs (fedflow's held-out rows, initial weights and batch settings)."""
    import digits_plan
    import torch

    from fedflow.apps.train import derive_seed
    from fedflow.training.engine import deterministic, split_rows

    deterministic()
    xs, ys, xv, yv = [], [], [], []
    for i in range(1, sites + 1):
        x, y = digits_data.read(data / f"site{i:02d}.csv")
        train, held = split_rows(len(y), SETTINGS["validation"], seed, f"site{i:02d}")
        xs.append(x[train])
        ys.append(y[train])
        xv.append(x[held])
        yv.append(y[held])
    x, y = torch.from_numpy(np.vstack(xs)), torch.from_numpy(np.concatenate(ys))
    torch.manual_seed(derive_seed(seed, "init"))
    model = digits_plan.model()
    stream = derive_seed(seed, "centralized")
    torch.manual_seed(stream)
    generator = torch.Generator().manual_seed(stream)
    optimizer = digits_plan.optimizer(model.parameters(), SETTINGS["lr"])
    batch = int(SETTINGS["batch_size"])
    started = time.perf_counter()
    model.train()
    for _ in range(rounds * int(SETTINGS["local_epochs"])):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            rows = order[start : start + batch]
            loss = digits_plan.loss(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    model.eval()
    xt, yt = digits_data.read(data / "test.csv")
    with torch.no_grad():
        val = digits_plan.metrics(
            model(torch.from_numpy(np.vstack(xv))), torch.from_numpy(np.concatenate(yv))
        )
        test = digits_plan.metrics(model(torch.from_numpy(xt)), torch.from_numpy(yt))
    return {
        "validation_accuracy": val["accuracy"],
        "test_accuracy": test["accuracy"],
        "training_seconds": seconds,
    }


def run_fedflow(data: Path, sites: int, rounds: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(1, sites + 1):
            (folder / f"site{i:02d}.csv").write_bytes((data / f"site{i:02d}.csv").read_bytes())
        (folder / "digits_plan.py").write_bytes((PEERS / "digits_plan.py").read_bytes())
        (folder / "study.toml").write_text(study_text(sites, rounds, seed))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", "run", "-q"],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise RuntimeError(f"fedflow run failed (exit {done.returncode}): {lines[-1]}")
        metrics = json.loads((folder / "run" / "metrics.json").read_text())
        accuracy = test_accuracy(folder / "run", data / "test.csv")
        weights = flat_weights(folder / "run" / "model-last.safetensors")
        np.save(data / "fedflow-weights.npy", weights, allow_pickle=False)
    entries = metrics["rounds"]
    training = entries[1:rounds]  # rounds 2..rounds; exchange rounds + 1 only validates
    between = metrics.get("checkpoint_seconds") or [0.0] * len(entries)  # before 676f6e7: none
    seconds = [e["seconds"] + after for e, after in zip(entries, between, strict=True)]
    overhead = [
        e["seconds"] - max(s["compute_seconds"] for s in e["sites"].values()) + after
        for e, after in zip(training, between[1:rounds], strict=True)
    ]
    history = {h["round"]: h for h in metrics["training"]}
    compute = [max(s["compute_seconds"] for s in e["sites"].values()) for e in training]
    return {
        "wall_seconds": wall,
        "rounds_seconds": sum(seconds),
        "median_round_seconds": statistics.median(seconds[1:rounds]),
        "median_overhead_seconds": statistics.median(overhead),
        "median_coordinator_cpu_seconds": statistics.median(
            metrics.get("coordinator_cpu_seconds") or [float("nan")]
        ),
        "rounds_over_compute": sum(seconds[1:rounds]) / sum(compute),
        "bytes_per_round": statistics.median(
            s["bytes_to_site"] + s["bytes_from_site"] for e in training for s in e["sites"].values()
        ),
        "validation_accuracy": history[rounds]["global"]["accuracy"],
        "test_accuracy": accuracy,
        "peak_rss_mib": max(s["peak_rss_bytes"] for s in metrics["sites"].values()) / 2**20,
    }


def run_flower(data: Path, sites: int, rounds: int, seed: int) -> dict[str, Any]:
    python = flower_python()
    if not python.exists():
        raise RuntimeError(f"{python} missing: run bash benchmarks/peers/setup_flower.sh")
    args = [str(python), str(PEERS / "flower_digits.py"), f"--sites={sites}"]
    args += [f"--weights-out={data / 'flower-weights.npy'}"]
    args += [f"--rounds={rounds}", f"--seed={seed}", f"--data={data}"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    if done.returncode != 0:
        lines = (done.stderr.strip() or "no output").splitlines()
        raise RuntimeError(f"flower_digits.py failed (exit {done.returncode}): {lines[-1]}")
    found = next(
        (json.loads(line) for line in reversed(done.stdout.splitlines()) if line.startswith("{")),
        None,
    )
    if found is None:
        raise RuntimeError("flower_digits.py printed no JSON line")
    return {
        "wall_seconds": found["wall_seconds"],
        "rounds_seconds": found["rounds_seconds"],
        "median_round_seconds": found["median_round_seconds"],
        "median_overhead_seconds": found["median_overhead_seconds"],
        "rounds_over_compute": sum(found["round_seconds"][1:])
        / sum(found["compute_round_seconds"][1:]),
        "bytes_per_round": found["bytes_to_site_per_round"] + found["bytes_from_site_per_round"],
        "validation_accuracy": found["validation_accuracy"][-1],
        "test_accuracy": found["test_accuracy"],
        "peak_rss_mib": found["actor_peak_rss_mib"],
    }


ROWS = [
    ("wall, whole run", "wall_seconds", "s"),
    ("rounds, summed", "rounds_seconds", "s"),
    ("round, median", "median_round_seconds", "ms"),
    ("overhead per round, median", "median_overhead_seconds", "ms"),
    ("coordinator CPU per round, median (fedflow)", "median_coordinator_cpu_seconds", "ms"),
    ("rounds after round 1 / the slowest site's compute in them", "rounds_over_compute", "x"),
    ("bytes per site and round", "bytes_per_round", "kB"),
    ("peak RSS (fedflow: a site; Flower: a Ray actor)", "peak_rss_mib", "MiB"),
    ("validation accuracy after the last round", "validation_accuracy", ""),
    ("test accuracy, last model (same test set)", "test_accuracy", ""),
]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value * 1e3:,.1f} ms"
    if unit == "kB":
        return f"{value / 1e3:,.1f} kB"
    if unit == "s":
        return f"{value:,.2f} s"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--split", choices=["iid", "dirichlet", "both"], default="both")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", choices=["fedflow", "flower"], help="run one side only")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 carries start-up)")
    splits = ["iid", "dirichlet"] if args.split == "both" else [args.split]

    everything = []
    print(f"load average before: {_load()}", flush=True)
    for n in args.sites:
        for split in splits:
            everything.append(compare(n, split, args))
    print(f"\nload average after: {_load()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


def compare(n: int, split: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run both frameworks on one site count and split; print the table; return the figures."""
    runs: dict[str, list[dict[str, Any]]] = {"fedflow": [], "flower": []}
    notes = []
    label = "IID" if split == "iid" else f"Dirichlet α = {args.alpha:g}"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        digits_data.write_split(data, n, args.seed)
        if split == "dirichlet":
            write_dirichlet(data, n, args.alpha, args.seed)
        central = centralized(data, n, args.rounds, args.seed)
        for _ in range(args.repeat):
            for side, call in (("fedflow", run_fedflow), ("flower", run_flower)):
                if args.only and side != args.only:
                    continue
                try:
                    runs[side].append(call(data, n, args.rounds, args.seed))
                except RuntimeError as exc:
                    notes.append(f"{side}: {exc}")
        gap = None
        if (data / "fedflow-weights.npy").exists() and (data / "flower-weights.npy").exists():
            a = np.load(data / "fedflow-weights.npy", allow_pickle=False)
            b = np.load(data / "flower-weights.npy", allow_pickle=False)
            gap = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    f, w = _median(runs["fedflow"]), _median(runs["flower"])
    print(
        f"\n{n} sites × {args.rounds} rounds, {label} ({args.repeat} run(s) each, medians; "
        f"load {_load()})\n"
    )
    print("| what | fedflow | Flower | fedflow / Flower |")
    print("| --- | ---: | ---: | ---: |")
    for row, key, unit in ROWS:
        a, b = f.get(key), w.get(key)
        ratio = "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"
        print(f"| {row} | {_fmt(a, unit)} | {_fmt(b, unit)} | {ratio} |", flush=True)
    print(
        f"\ncentralized ({args.rounds} epochs on the sites' pooled training rows): validation "
        f"accuracy {central['validation_accuracy']:.4f}, test accuracy "
        f"{central['test_accuracy']:.4f} ({central['training_seconds']:.2f} s of training)"
    )
    if gap is not None:
        print(f"largest difference between fedflow's and Flower's final weights: {gap:.3g}")
    for note in notes:
        print(f"note: {note}", flush=True)
    return {
        "sites": n,
        "split": label,
        "runs": runs,
        "centralized": central,
        "largest_weight_difference": gap,
        "notes": notes,
    }


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}, {five:.2f}"


def _median(found: list[Mapping[str, Any]]) -> dict[str, Any]:
    if not found:
        return {}
    return {
        key: statistics.median(r[key] for r in found)
        for _, key, _ in ROWS
        if all(key in r for r in found)  # Flower has no coordinator CPU figure
    }


if __name__ == "__main__":
    main()
