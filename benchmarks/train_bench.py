"""fedflow's `app = "train"` on the digits MLP: cost per round and accuracy against centralized
training with the same epochs, for IID sites and a Dirichlet label skew.

    python benchmarks/train_bench.py                       # 3 and 10 sites x 20 rounds, IID and α = 0.5
    python benchmarks/train_bench.py --sites 3 --split iid --json out.json
    python benchmarks/train_bench.py --sites 3 10 --split iid --secure   # plaintext, then secure = true
    python benchmarks/train_bench.py --sites 10 --split iid --repeat 3 --baseline /tmp/trainbase/src
        # each run alternately with another tree's fedflow (e.g. a `git worktree` of the commit
        # before a change), under the same load; medians and their ratio
    python benchmarks/train_bench.py --sites 3 --split iid --secure --strategy scaffold
    python benchmarks/train_bench.py --sites 3 --split iid --hidden 1024 1024 --repeat 3 \
        --baseline /tmp/trainbase/src      # a 1.1M-parameter MLP: a 9 MB checkpoint a round

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
- overhead: per round (2..rounds) its duration less the slowest site's compute, plus the time
  the coordinator spent after it before the next round (checkpoint, metrics.json:
  metrics.json's checkpoint_seconds; trees before c8bdaf7 do not record it and count 0), median;
- coordinator CPU per round: the coordinator process's own CPU from one checkpoint to the next
  (metrics.json's coordinator_cpu_seconds, since 676f6e7), median: its overhead apart from the
  site processes queueing for the cores, which the overhead above also holds;
- the local training the run contains: the slowest site's compute summed over exchanges 2..21,
  plus for exchange 1 the median of exchanges 2..20 (exchange 1 does the same work; its own
  compute also holds the plan's first load and, before 52e5c6e, each site's `import torch`);
- run / training: every exchange's duration plus the time between exchanges, over that training;
  wall / training: the whole command over it (start-up included: Python, torch at the
  coordinator and in the fork server, --compare's centralized training);
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
    sites: int,
    rounds: int,
    seed: int,
    secure: bool = False,
    strategy: str = "fedavg",
    local_epochs: int = 1,
) -> str:
    text = (
        f'name = "digits-bench"\napp = "train"\nseed = {seed}\n'
        + ("secure = true\n" if secure else "")
        + "[params]\n"
        f'plan = "digits_plan.py"\ntarget = "{digits_data.TARGET}"\nrounds = {rounds}\n'
        f'metric = "accuracy"\nstrategy = "{strategy}"\n'
    )
    settings = {**SETTINGS, "local_epochs": local_epochs}
    text += "".join(f"{k} = {v}\n" for k, v in settings.items())
    for i in range(1, sites + 1):
        text += f'[[clients]]\nname = "site{i:02d}"\ndata = ["site{i:02d}.csv"]\n'
    return text


def plan_text(hidden: list[int] | None) -> str:
    """digits_plan.py, or with ``hidden`` its model's hidden layers of those widths."""
    text = (PEERS / "digits_plan.py").read_text()
    if not hidden:
        return text
    widths = [64, *hidden, 10]
    layers = ", nn.ReLU(), ".join(
        f"nn.Linear({a}, {b})" for a, b in zip(widths, widths[1:], strict=False)
    )
    old = "nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))"
    assert old in text, "digits_plan.py's model changed: update plan_text"
    return text.replace(old, f"nn.Sequential({layers})")


def test_accuracy(run: Path, test: Path) -> float:
    import importlib.util

    import torch
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("run_plan", run / "plan.py")  # the run's copy
    assert spec is not None and spec.loader is not None
    digits_plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits_plan)
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
    src: str | None = None,
    local_epochs: int = 1,
    compare: bool = True,
    hidden: list[int] | None = None,
) -> dict[str, Any]:
    """Run the digits MLP on ``sites`` local sites for ``rounds`` rounds (``secure``: with
    ``secure = true``, the weights summed under masks; ``src``: the fedflow of that source
    folder, by PYTHONPATH; ``compare``: with ``--compare``, whose centralized training the
    wall time then includes); return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digits_data.write_split(folder, sites, seed)
        if split == "dirichlet":
            write_dirichlet(folder, sites, alpha, seed)
        (folder / "digits_plan.py").write_text(plan_text(hidden))
        (folder / "study.toml").write_text(
            study_text(sites, rounds, seed, secure, strategy, local_epochs)
        )
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", "run", "-q"]
            + (["--compare"] if compare else []),
            cwd=folder,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": src} if src else None,
        )
        wall = time.perf_counter() - started
        if done.returncode not in (0, 4):  # 4: the compare verdict is a mismatch
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise RuntimeError(f"fedflow run failed (exit {done.returncode}): {lines[-1]}")
        run = folder / "run"
        metrics = json.loads((run / "metrics.json").read_text())
        comparison = json.loads((run / "comparison.json").read_text()) if compare else None
        accuracy = test_accuracy(run, folder / "test.csv")
        checkpoint_bytes = (run / "checkpoint.safetensors").stat().st_size
    entries = metrics["rounds"]
    compute = [max(s["compute_seconds"] for s in e["sites"].values()) for e in entries]
    between = metrics.get("checkpoint_seconds") or [0.0] * len(entries)
    training = entries[1:rounds]  # rounds 2..rounds; round 1 carries the sites' start
    overhead = [
        e["seconds"] - max(s["compute_seconds"] for s in e["sites"].values()) + after
        for e, after in zip(training, between[1:rounds], strict=True)
    ]
    contained = sum(compute[1:]) + statistics.median(compute[1:rounds])
    (item,) = comparison["items"] if comparison else [{"centralized": float("nan")}]
    history = {h["round"]: h for h in metrics["training"]}
    return {
        "sites": sites,
        "rounds": rounds,
        "split": split if split == "iid" else f"dirichlet {alpha}",
        "secure": secure,
        "strategy": strategy,
        "local_epochs": local_epochs,
        "compare": compare,
        "hidden": hidden or [64],
        "checkpoint_bytes": checkpoint_bytes,
        "wall_seconds": wall,
        "rounds_seconds": sum(e["seconds"] for e in entries),
        "training_seconds": sum(compute),
        "training_seconds_after_round_1": sum(compute[1:]),
        "rounds_seconds_after_round_1": sum(e["seconds"] for e in entries[1:]),
        "between_rounds_seconds": sum(between),
        "median_between_seconds": statistics.median(between[1:rounds]),
        "median_coordinator_cpu_seconds": statistics.median(
            metrics.get("coordinator_cpu_seconds") or [float("nan")]
        ),
        "run_over_training": (sum(e["seconds"] for e in entries) + sum(between)) / contained,
        "wall_over_training": wall / contained,
        "run_over_training_after_round_1": (
            sum(e["seconds"] for e in entries[1:]) + sum(between[1:])
        )
        / sum(compute[1:]),
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
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (medians)")
    parser.add_argument(
        "--local-epochs", type=int, default=1, help="epochs each site trains a round (default 1)"
    )
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        help="the MLP's hidden layer widths (default: digits_plan.py's one layer of 64)",
    )
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="run without --compare (the wall time then holds no centralized training)",
    )
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run another tree's fedflow (its src folder), alternately with this one",
    )
    args = parser.parse_args()
    if args.baseline:
        compare_trees(args)
        return
    splits = ["iid", "dirichlet"] if args.split == "both" else [args.split]
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for n in args.sites:
        for split, secure in [(sp, m) for sp in splits for m in [False, True][: 1 + args.secure]]:
            r = measure(
                n,
                args.rounds,
                split,
                args.alpha,
                args.seed,
                secure,
                args.strategy,
                local_epochs=args.local_epochs,
                compare=args.compare,
                hidden=args.hidden,
            )
            results.append(r)
            print(
                f"{n:>2} sites {r['split']:<14}{' secure' if secure else ''} wall {r['wall_seconds']:6.1f} s "
                f"({r['wall_over_training']:.2f}x the training it contains) | rounds "
                f"{r['rounds_seconds']:5.2f} s (after round 1 {r['rounds_seconds_after_round_1']:5.2f}"
                f" s, sites' training in them {r['training_seconds_after_round_1']:5.2f} s) | "
                f"overhead {r['median_overhead_seconds'] * 1e3:5.1f} ms/round "
                f"(coordinator CPU {r['median_coordinator_cpu_seconds'] * 1e3:4.1f} ms) | "
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


COMPARED = [
    ("wall, whole command", "wall_seconds", "s"),
    ("round 1", "round_1_seconds", "s"),
    ("rounds 2-21 + time between them", "rounds_after_1", "s"),
    ("overhead per round (median)", "median_overhead_seconds", "ms"),
    ("time between rounds (median)", "median_between_seconds", "ms"),
    ("coordinator CPU per round (median)", "median_coordinator_cpu_seconds", "ms"),
    ("rounds and between / training in them (all)", "run_over_training", "x"),
    ("same, rounds 2-21", "run_over_training_after_round_1", "x"),
    ("wall / training", "wall_over_training", "x"),
    ("peak RSS of a site", "peak_rss_mib", "MiB"),
]


def compare_trees(args: argparse.Namespace) -> None:
    """Run each case with this tree and with ``--baseline``'s, alternately, ``--repeat`` times;
    print the medians and their ratio (this tree / baseline)."""
    splits = ["iid", "dirichlet"] if args.split == "both" else [args.split]
    here = str(Path(__file__).resolve().parents[1] / "src")
    for n in args.sites:
        for split in splits:
            runs: dict[str, list[dict[str, Any]]] = {"this": [], "baseline": []}
            loads = [os.getloadavg()[0]]
            for _ in range(args.repeat):
                for side, src in (("this", here), ("baseline", args.baseline)):
                    r = measure(
                        n,
                        args.rounds,
                        split,
                        args.alpha,
                        args.seed,
                        src=src,
                        local_epochs=args.local_epochs,
                        compare=args.compare,
                        hidden=args.hidden,
                    )
                    r["round_1_seconds"] = r["rounds_seconds"] - r["rounds_seconds_after_round_1"]
                    r["rounds_after_1"] = (
                        r["rounds_seconds_after_round_1"] + (r["between_rounds_seconds"])
                    )
                    runs[side].append(r)
                    loads.append(os.getloadavg()[0])
            print(
                f"\n{n} sites, {split}, {args.repeat} run(s) each, alternately; load average "
                f"{min(loads):.1f}-{max(loads):.1f}\n"
            )
            print(f"| what | this tree | baseline ({args.baseline}) | this / baseline |")
            print("| --- | ---: | ---: | ---: |")
            for label, key, unit in COMPARED:
                a = statistics.median(r[key] for r in runs["this"])
                b = statistics.median(r[key] for r in runs["baseline"])
                scale, fmt = (1e3, ".1f") if unit == "ms" else (1, ".2f")
                print(
                    f"| {label} | {a * scale:{fmt}} {unit} | {b * scale:{fmt}} {unit} | {a / b:.2f} |"
                )
            same = {r["test_accuracy"] for side in runs.values() for r in side}
            print(f"\ntest accuracy in every run: {', '.join(f'{a:.4f}' for a in sorted(same))}")
            if args.json:
                args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
