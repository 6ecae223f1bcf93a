"""Time the site steps of linear-regression, logistic-regression and glm on one site's rows,
streamed in batches (the default 64 Ki rows), in the clear and in their secure formulations
(exact cross-products).

    OPENBLAS_NUM_THREADS=1 python benchmarks/regression_site_steps.py [--rows 1000000] [--features 5]

Prints the best of three CPU times (process time: steadier than wall time when other jobs share
the cores) and wall times of each step, and the load average before and after: give it with
the figures.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from fedflow.apps import get_app
from fedflow.apps._regression import Coefficients
from fedflow.apps.base import Empty, Payload, SiteContext, Table


def _best(label: str, step: Callable[[], object], repeats: int = 3) -> None:
    cpu = wall = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        step()
        cpu = min(cpu, time.process_time() - started_cpu)
        wall = min(wall, time.perf_counter() - started)
    print(f"{label:<45} cpu {cpu:7.3f} s   wall {wall:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    features = [f"x{i}" for i in range(args.features)]
    columns = {name: rng.normal(size=args.rows) for name in features}
    columns["y"] = sum(columns.values()) + rng.normal(size=args.rows)
    columns["b"] = (rng.uniform(size=args.rows) < 0.5).astype(np.int64)
    table = Table(columns)
    ctx = SiteContext(site="bench", min_count=1)
    beta = Coefficients(beta=np.full(args.features + 1, 0.01))
    steps: list[tuple[str, str, dict[str, object], str, Payload]] = [
        (
            "linear-regression factor (plaintext)",
            "linear-regression",
            {"target": "y"},
            "factor",
            Empty(),
        ),
        (
            "linear-regression cross (secure)",
            "linear-regression",
            {"target": "y"},
            "cross",
            Empty(),
        ),
        (
            "logistic-regression newton (both)",
            "logistic-regression",
            {"target": "b"},
            "newton",
            beta,
        ),
        (
            "glm binomial irls (plaintext)",
            "glm",
            {"target": "b", "family": "binomial"},
            "irls",
            beta,
        ),
        (
            "glm binomial irls_sums (secure)",
            "glm",
            {"target": "b", "family": "binomial"},
            "irls_sums",
            beta,
        ),
    ]
    print(f"{args.rows} rows, {args.features} features; load average {os.getloadavg()}")
    for label, name, raw, phase, request in steps:
        app = get_app(name)
        params = app.parse_params({**raw, "features": features})
        _best(label, lambda: app.local(table, params, phase, request, ctx))  # noqa: B023
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
