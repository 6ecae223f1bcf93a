"""Flower's SecAgg+ workflow summing a vector over n clients, timed per round; prints JSON.

Runs in the Flower virtual environment made by benchmarks/peers/setup_flower.sh, not in
fedflow's (it imports no fedflow code):

    ~/.cache/fedflow/peers/flower/bin/python benchmarks/peers/flower_secagg.py --sites 3 --length 10000

Flower's simulation engine (Ray backend, in-process LinkState) runs a ServerApp whose
`DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))` drives `rounds` rounds; each ClientApp
(`secaggplus_mod`) returns a fixed vector of `length` float64 values with weight 1. Every round is
SecAgg+'s four stages (setup, share keys, collect masked vectors, unmask) over all clients.

- `round_seconds`: wall time of each round's fit workflow, measured in the ServerApp (round 1
  carries one-time warm-up; the median is over rounds 2..). No evaluate round runs.
- bytes per site: the size of every protobuf `Message` the ServerApp sends to and receives from
  each node (`message_to_proto(...).ByteSize()`), per round — what the deployment engine's gRPC
  would carry, without gRPC framing. In the simulation the messages do not cross a socket.
- `max_abs_error`: largest difference between Flower's aggregate and the exact mean of the
  clients' vectors (SecAgg+ quantises: clipping range 8, quantisation range 2^22 by default).

By default every client shares its secrets with all others (`--num-shares 1.0`) and the
reconstruction threshold is a majority (n // 2 + 1), like fedflow's `secure = true`.
Telemetry is off (FLWR_TELEMETRY_ENABLED=0, RAY_USAGE_STATS_ENABLED=0) and Ray uses `--cpus`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import flower_common  # noqa: F401  (telemetry off before flwr and Ray load)
import flwr
import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flower_common import MeteredGrid, backend_config
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation


def client_vector(index: int, length: int) -> np.ndarray:
    """Client ``index``'s vector: values in [-1, 1], different at every client and position."""
    return np.sin(np.arange(length, dtype=np.float64) * 0.001 + index)


class TimedWorkflow:
    """Wraps the fit workflow: times each round and tells the metered grid which round it is."""

    def __init__(self, inner: SecAggPlusWorkflow, grid: MeteredGrid) -> None:
        self.inner = inner
        self.grid = grid
        self.seconds: list[float] = []

    def __call__(self, grid: Any, context: Context) -> None:
        self.grid.round = len(self.seconds) + 1
        started = time.perf_counter()
        self.inner(grid, context)
        self.seconds.append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--length", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--num-shares", type=float, default=1.0, help="fraction of clients (≤ 1) or a count"
    )
    parser.add_argument(
        "--threshold", type=int, default=0, help="default: a majority of the shares"
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    parser.add_argument("--verbose", action="store_true", help="keep Flower's and Ray's logs")
    args = parser.parse_args()
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)

    n, length = args.sites, args.length
    num_shares: int | float = args.num_shares if args.num_shares <= 1 else int(args.num_shares)
    shares = round(num_shares * n) if isinstance(num_shares, float) else num_shares
    threshold = args.threshold or shares // 2 + 1
    exact_mean = np.mean([client_vector(i, length) for i in range(n)], axis=0)
    found: dict[str, Any] = {}

    class VectorClient(NumPyClient):
        def __init__(self, index: int) -> None:
            self.index = index

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return [client_vector(self.index, length)], 1, {}

    def client_fn(context: Context) -> Any:
        return VectorClient(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Any, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_evaluate_clients=0,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.zeros(length)]),
        )
        legacy = LegacyContext(
            context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy
        )
        metered = MeteredGrid(grid)
        fit = TimedWorkflow(
            SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold), metered
        )
        DefaultWorkflow(fit_workflow=fit)(metered, legacy)
        record = legacy.state.array_records[MAIN_PARAMS_RECORD]
        aggregate = parameters_to_ndarrays(
            compat.arrayrecord_to_parameters(record, keep_input=True)
        )[0]
        found["round_seconds"] = fit.seconds
        found["grid"] = metered
        found["aggregate"] = aggregate

    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend_config(args.cpus),
        verbose_logging=args.verbose,
    )
    wall = time.perf_counter() - started
    if "round_seconds" not in found or len(found["round_seconds"]) != args.rounds:
        raise SystemExit(
            f"Flower's SecAgg+ run did not complete {args.rounds} rounds (see the log above)"
        )

    seconds = found["round_seconds"]
    later = seconds[1:] or seconds
    to_site, from_site = found["grid"].per_site(range(1, args.rounds + 1))
    aggregate = np.asarray(found["aggregate"], dtype=np.float64)
    print(
        json.dumps(
            {
                "framework": "flower",
                "flwr": flwr.__version__,
                "engine": "simulation (ray)",
                "workflow": "SecAggPlusWorkflow",
                "sites": n,
                "length": length,
                "rounds": args.rounds,
                "num_shares": shares,
                "threshold": threshold,
                "round_seconds": seconds,
                "median_round_seconds": statistics.median(later),
                "bytes_to_site_per_round": statistics.median(to_site),
                "bytes_from_site_per_round": statistics.median(from_site),
                "max_abs_error": float(np.max(np.abs(aggregate - exact_mean))),
                "wall_seconds": wall,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
