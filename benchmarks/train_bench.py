"""fedflow's `app = "train"` on the digits MLP: cost per round and accuracy against centralized
training with the same epochs, for IID sites and a Dirichlet label skew.

    python benchmarks/train_bench.py                       # 3 and 10 sites x 20 rounds, IID and α = 0.5
    python benchmarks/train_bench.py --sites 3 --split iid --json out.json
    python benchmarks/train_bench.py --sites 3 10 --split iid --secure   # plaintext, then secure = true
    python benchmarks/train_bench.py --sites 3 --split iid --secure --strategy scaffold

`measure(sites, rounds, split, alpha, seed)` returns one run's figures (a dict), so that other
scripts (benchmarks/training_vs_flower.py runs Flower's side) can combine them. The model, data
and settings are those of benchmarks/peers (digits_plan.py: 64-64-10 MLP, SGD; digits_data.py:
scikit-learn's digits scaled to [0, 1], 20 % held out as a test set): seed 42, 1 local epoch,
batches of 32, lr 0.1, 20 % of each site's rows held out for validation, every site every round.

Each run is `fedflow run --compare` on local site processes; figures come from its metrics.json
and comparison.json:

- wall: the whole command; rounds: the rounds summed; training: per round the slowest site's own
  compute (validate-global, training, validate-local), summed — the local training the run
  contains; run / training: wall and rounds over that;
- overhead: per round (2..rounds) its duration less the slowest site's compute, median;
- bytes: to and from one site per round (weights both ways), median;
- peak RSS: the largest site process;
- accuracy: the last model's pooled validation accuracy, the centrally trained model's validation
  accuracy (`--compare`: the plan on the pooled rows, rounds × local_epochs epochs; its held-out
  rows are a seeded fifth of the pooled rows, not the same rows), and the last model's accuracy
  on the central test set.

Dirichlet split: for every digit, the shares of the sites are drawn from Dir(α) (seeded) and that
digit's rows dealt accordingly.
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
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path.insert(0, str(PEERS))

import digits_data  # noqa: E402

SETTINGS = {"local_epochs": 1, "batch_size": 32, "lr": 0.1, "validation": 0.2}


def write_dirichlet(out: Path, sites: int, alpha: float, seed: int) -> None:
    """Rewrite the site files of ``out`` (written IID by digits_data) with a Dirichlet label
    skew over the same training rows; the test set is unchanged."""
    parts = [digits_data.read(out / f"site{i:02d}.csv") for i in range(1, sites + 1)]
    x = np.vstack([p[0] for p in parts]).astype(np.float64)
    y = np.concatenate([p[1] for p in parts])
    rng = np.random.default_rng(seed)
    owners = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(sites, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for site, chunk in enumerate(np.split(rows, cuts)):
            owners[chunk] = site
    for site in range(sites):
        rows = np.flatnonzero(owners == site)
        if len(rows) < 10:  # every site needs rows to train and validate
            raise ValueError(f"site {site + 1} got {len(rows)} rows; try another seed")
        digits_data._write(out / f"site{site + 1:02d}.csv", x[rows], y[rows])


def study_text(
    sites: int, rounds: int, seed: int, secure: bool = False, strategy: str = "fedavg"
) -> str:
    text = (
        f'name = "digits-bench"\napp = "train"\nseed = {seed}\n'
        + ("secure = true\n" if secure else "")
        + "[params]\n"
        f'plan = "digits_plan.py"\ntarget = "{digits_data.TARGET}"\nrounds = {rounds}\n'
        f'metric = "accuracy"\nstrategy = "{strategy}"\n'
    )
    text += "".join(f"{k} = {v}\n" for k, v in SETTINGS.items())
    for i in range(1, sites + 1):
        text += f'[[clients]]\nname = "site{i:02d}"\ndata = ["site{i:02d}.csv"]\n'
    return text


def test_accuracy(run: Path, test: Path) -> float:
    import digits_plan
    import torch
    from safetensors.torch import load_file

    model = digits_plan.model()
    model.load_state_dict(load_file(str(run / "model-last.safetensors")))
    model.eval()
    x, y = digits_data.read(test)
    with torch.no_grad():
        return digits_plan.metrics(model(torch.from_numpy(x)), torch.from_numpy(y))["accuracy"]


def measure(
    sites: int,
    rounds: int = 20,
    split: str = "iid",
    alpha: float = 0.5,
    seed: int = 42,
    secure: bool = False,
    strategy: str = "fedavg",
) -> dict[str, Any]:
    """Run the digits MLP on ``sites`` local sites for ``rounds`` rounds (``secure``: with
    ``secure = true``, the weights summed under masks); return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digits_data.write_split(folder, sites, seed)
        if split == "dirichlet":
            write_dirichlet(folder, sites, alpha, seed)
        (folder / "digits_plan.py").write_bytes((PEERS / "digits_plan.py").read_bytes())
        (folder / "study.toml").write_text(study_text(sites, rounds, seed, secure, strategy))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", "run", "-q"]
            + ["--compare"],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode not in (0, 4):  # 4: the compare verdict is a mismatch
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise RuntimeError(f"fedflow run failed (exit {done.returncode}): {lines[-1]}")
        run = folder / "run"
        metrics = json.loads((run / "metrics.json").read_text())
        comparison = json.loads((run / "comparison.json").read_text())
        accuracy = test_accuracy(run, folder / "test.csv")
    entries = metrics["rounds"]
    compute = [max(s["compute_seconds"] for s in e["sites"].values()) for e in entries]
    training = entries[1:rounds]  # rounds 2..rounds; round 1 carries torch's import
    overhead = [
        e["seconds"] - max(s["compute_seconds"] for s in e["sites"].values()) for e in training
    ]
    (item,) = comparison["items"]
    history = {h["round"]: h for h in metrics["training"]}
    return {
        "sites": sites,
        "rounds": rounds,
        "split": split if split == "iid" else f"dirichlet {alpha}",
        "secure": secure,
        "strategy": strategy,
        "wall_seconds": wall,
        "rounds_seconds": sum(e["seconds"] for e in entries),
        "training_seconds": sum(compute),
        "training_seconds_after_round_1": sum(compute[1:]),
        "rounds_seconds_after_round_1": sum(e["seconds"] for e in entries[1:]),
        "median_overhead_seconds": statistics.median(overhead),
        "bytes_per_site_round": statistics.median(
            s["bytes_to_site"] + s["bytes_from_site"] for e in training for s in e["sites"].values()
        ),
        "peak_rss_mib": max(s["peak_rss_bytes"] for s in metrics["sites"].values()) / 2**20,
        "validation_accuracy": history[rounds]["global"]["accuracy"],
        "centralized_validation_accuracy": item["centralized"],
        "test_accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--split", choices=["iid", "dirichlet", "both"], default="both")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--secure", action="store_true", help="run each case plaintext, then with secure = true"
    )
    parser.add_argument("--strategy", default="fedavg", help="the study's strategy (scaffold…)")
    args = parser.parse_args()
    splits = ["iid", "dirichlet"] if args.split == "both" else [args.split]
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for n in args.sites:
        for split, secure in [(sp, m) for sp in splits for m in [False, True][: 1 + args.secure]]:
            r = measure(n, args.rounds, split, args.alpha, args.seed, secure, args.strategy)
            results.append(r)
            print(
                f"{n:>2} sites {r['split']:<14}{' secure' if secure else ''} wall {r['wall_seconds']:6.1f} s | rounds "
                f"{r['rounds_seconds']:5.2f} s (after round 1 {r['rounds_seconds_after_round_1']:5.2f}"
                f" s, sites' training in them {r['training_seconds_after_round_1']:5.2f} s) | "
                f"overhead {r['median_overhead_seconds'] * 1e3:5.1f} ms/round | "
                f"{r['bytes_per_site_round'] / 1e3:5.1f} kB/site/round | "
                f"peak {r['peak_rss_mib']:4.0f} MiB | accuracy val {r['validation_accuracy']:.4f} "
                f"vs centralized {r['centralized_validation_accuracy']:.4f}, "
                f"test {r['test_accuracy']:.4f}",
                flush=True,
            )
            if secure:
                plain = results[-2]
                print(
                    "   secure / plaintext: rounds after round 1 "
                    f"{r['rounds_seconds_after_round_1'] / plain['rounds_seconds_after_round_1']:.2f}x"
                    f", overhead {r['median_overhead_seconds'] * 1e3:.1f} vs "
                    f"{plain['median_overhead_seconds'] * 1e3:.1f} ms/round, bytes "
                    f"{r['bytes_per_site_round'] / plain['bytes_per_site_round']:.2f}x",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
