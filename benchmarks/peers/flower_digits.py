"""Flower's simulation of the digits MLP over n clients with FedAvg; prints JSON.

Runs in the Flower virtual environment made by benchmarks/peers/setup_flower.sh:

    ~/.cache/fedflow/peers/flower/bin/python benchmarks/peers/flower_digits.py --sites 3
    ... --data DIR    # site01.csv … and test.csv written by digits_data.write_split (else made here)

The model, loss and optimiser are benchmarks/peers/digits_plan.py, the fedflow plan that
benchmarks/training_vs_flower.py gives fedflow. Flower's Message API: a ServerApp running
`flwr.serverapp.strategy.FedAvg.start` (weighted by rows) for `rounds` rounds and ClientApps with
`@train` and `@evaluate`, in the simulation engine (Ray backend, `--cpus` CPUs, one per client
actor). Each round every client trains `local_epochs` epochs of seeded minibatches (SGD, `lr`,
`batch_size`) on its training rows, then every client evaluates the new global model on its
held-out rows (`validation` fraction, seeded per site) — the same work per round as fedflow's
`app = "train"` (train, then validate-global). torch runs one thread per client, deterministic.

Every random stream is drawn as fedflow draws it (`derive_seed` below repeats
fedflow.apps.train.derive_seed: sha256 of the seed and the stream's name), so both frameworks
start from the same initial weights, hold out the same rows of each site and shuffle the same
minibatches: they run the same computation and differ only in how they move and sum weights.

- `round_seconds`: from configure_train to the end of aggregate_evaluate of each round, in the
  ServerApp; `overhead_seconds`: that minus the slowest client's training plus the slowest
  client's evaluation (as each client timed them).
- bytes per site and round: protobuf size of every message to / from the node (train and evaluate).
- `validation_accuracy`: the row-weighted accuracy of the global model on the clients' held-out
  rows after each round; `test_accuracy`: the final global model on the central test set.
- `actor_peak_rss_mib`: the largest peak RSS of the Ray actors that ran the clients (each actor
  runs many clients in turn, so this is not one site's memory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import digits_data
import digits_plan
import flower_common  # noqa: F401  (telemetry off before flwr and Ray load)
import flwr
import numpy as np
import torch
from flower_common import MeteredGrid, backend_config
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation


def derive_seed(seed: int, *parts: object) -> int:
    """fedflow's seed of the stream named by ``parts`` (fedflow.apps.train.derive_seed)."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def site_name(site: int) -> str:
    """The name training_vs_flower.py gives client ``site`` (0-based) in fedflow's study."""
    return f"site{site + 1:02d}"


def seeded_model(seed: int) -> torch.nn.Module:
    """The plan's model built as fedflow builds the initial global model."""
    torch.manual_seed(derive_seed(seed, "init"))
    return digits_plan.model()


def split(n: int, validation: float, seed: int, site: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of a site's ``n`` rows, as fedflow holds them out."""
    held = int(round(validation * n))
    order = np.random.default_rng(derive_seed(seed, "validation", site_name(site))).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--validation", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", type=Path, help="folder of site01.csv … and test.csv")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    parser.add_argument("--verbose", action="store_true", help="keep Flower's and Ray's logs")
    parser.add_argument(
        "--weights-out", type=Path, help="save the final global weights here (.npy, flat)"
    )
    args = parser.parse_args()
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp)
        if args.data is None:
            digits_data.write_split(folder, args.sites, args.seed)
        site_files = [folder / f"site{i:02d}.csv" for i in range(1, args.sites + 1)]
        for path in [*site_files, folder / "test.csv"]:
            if not path.is_file():
                raise SystemExit(
                    f"{path} does not exist (expected {args.sites} sites and test.csv)"
                )
        out = run(args, [str(p) for p in site_files], str(folder / "test.csv"))
    print(json.dumps(out), flush=True)


def run(args: argparse.Namespace, site_files: list[str], test_file: str) -> dict[str, Any]:
    n, seed = args.sites, args.seed
    client_app = ClientApp()

    def site_data(context: Context) -> tuple[int, Any, Any, Any, Any]:
        site = int(context.node_config["partition-id"])
        x, y = digits_data.read(Path(site_files[site]))
        train_rows, held_rows = split(len(y), args.validation, seed, site)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        return site, xt[train_rows], yt[train_rows], xt[held_rows], yt[held_rows]

    def peak_rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        site, x, y, _, _ = site_data(context)
        server_round = int(msg.content["config"]["server-round"])
        model = seeded_model(seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        stream = derive_seed(seed, "train", site_name(site), server_round)
        torch.manual_seed(stream)
        generator = torch.Generator().manual_seed(stream)
        optimizer = digits_plan.optimizer(model.parameters(), args.lr)
        model.train()
        total = 0.0
        for _ in range(args.local_epochs):
            order = torch.randperm(len(y), generator=generator)
            total = 0.0
            for start in range(0, len(y), args.batch_size):
                rows = order[start : start + args.batch_size]
                loss = digits_plan.loss(model(x[rows]), y[rows])
                total += float(loss.detach()) * len(rows)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        metrics = MetricRecord(
            {
                "train_loss": total / len(y),
                "num-examples": len(y),
                "train-seconds": time.perf_counter() - started,
                "peak-rss-mib": peak_rss_mib(),
            }
        )
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        torch.set_num_threads(1)
        _, _, _, x, y = site_data(context)
        model = seeded_model(seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            out = model(x)
            found = {"loss": float(digits_plan.loss(out, y))} | digits_plan.metrics(out, y)
        metrics = MetricRecord(
            found
            | {
                "num-examples": len(y),
                "eval-seconds": time.perf_counter() - started,
                "peak-rss-mib": peak_rss_mib(),
            }
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    timing: dict[str, Any] = {"start": {}, "end": {}, "train": {}, "eval": {}, "rss": []}

    def slowest(replies: list[Message], key: str) -> float:
        values = [float(r.content["metrics"][key]) for r in replies if r.has_content()]
        timing["rss"] += [
            float(r.content["metrics"]["peak-rss-mib"]) for r in replies if r.has_content()
        ]
        return max(values)

    class TimedFedAvg(FedAvg):
        """FedAvg that times each round and reads the clients' own compute times."""

        def __init__(self, grid: MeteredGrid, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.grid = grid

        def configure_train(self, server_round: int, *rest: Any) -> Iterable[Message]:
            self.grid.round = server_round
            timing["start"][server_round] = time.perf_counter()
            return super().configure_train(server_round, *rest)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            timing["train"][server_round] = slowest(replies, "train-seconds")
            return super().aggregate_train(server_round, replies)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            timing["eval"][server_round] = slowest(replies, "eval-seconds")
            result = super().aggregate_evaluate(server_round, replies)
            timing["end"][server_round] = time.perf_counter()
            return result

    found: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Any, context: Context) -> None:
        metered = MeteredGrid(grid)
        strategy = TimedFedAvg(
            metered,
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=n,
            min_evaluate_nodes=n,
            min_available_nodes=n,
        )
        result = strategy.start(
            grid=metered,
            initial_arrays=ArrayRecord(seeded_model(seed).state_dict()),
            num_rounds=args.rounds,
            train_config=ConfigRecord({"lr": args.lr}),
        )
        found["result"] = result
        found["grid"] = metered

    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend_config(args.cpus),
        verbose_logging=args.verbose,
    )
    wall = time.perf_counter() - started
    result = found.get("result")
    if result is None or len(timing["end"]) != args.rounds:
        raise SystemExit(f"Flower's run did not complete {args.rounds} rounds (see the log above)")

    rounds = range(1, args.rounds + 1)
    seconds = [timing["end"][r] - timing["start"][r] for r in rounds]
    overhead = [seconds[r - 1] - timing["train"][r] - timing["eval"][r] for r in rounds]
    accuracy = [float(result.evaluate_metrics_clientapp[r]["accuracy"]) for r in rounds]
    model = seeded_model(seed)
    model.load_state_dict(result.arrays.to_torch_state_dict())
    model.eval()
    if args.weights_out is not None:  # state_dict order, as fedflow's flat weights
        flat = [v.detach().numpy().ravel() for v in model.state_dict().values()]
        np.save(args.weights_out, np.concatenate(flat), allow_pickle=False)
    x_test, y_test = digits_data.read(Path(test_file))
    with torch.no_grad():
        test_accuracy = digits_plan.metrics(
            model(torch.from_numpy(x_test)), torch.from_numpy(y_test)
        )
    to_site, from_site = found["grid"].per_site(rounds)
    later = slice(1, None) if args.rounds > 1 else slice(None)
    return {
        "framework": "flower",
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "engine": "simulation (ray)",
        "strategy": "FedAvg",
        "sites": n,
        "rounds": args.rounds,
        "seed": seed,
        "wall_seconds": wall,
        "rounds_seconds": sum(seconds),
        "compute_round_seconds": [timing["train"][r] + timing["eval"][r] for r in rounds],
        "round_seconds": seconds,
        "median_round_seconds": statistics.median(seconds[later]),
        "median_overhead_seconds": statistics.median(overhead[later]),
        "bytes_to_site_per_round": statistics.median(to_site),
        "bytes_from_site_per_round": statistics.median(from_site),
        "validation_accuracy": accuracy,
        "test_accuracy": test_accuracy["accuracy"],
        "actor_peak_rss_mib": max(timing["rss"]),
    }


if __name__ == "__main__":
    main()
