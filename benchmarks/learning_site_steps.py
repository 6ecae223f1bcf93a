"""Time the site steps of kmeans and pca on one site's rows, streamed in batches (the default
64 Ki rows), in the clear and in their secure formulations (double-double sums).

    python benchmarks/learning_site_steps.py [--rows 1000000] [--columns 5]

Prints the best of three wall times of each step, next to plain numpy baselines over the whole
matrix (the work the step replaces). Figures depend on the machine's load: give ``uptime``'s
load average with them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from fedflow.apps import get_app
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.kmeans import Centers, nearest
from fedflow.apps.pca import Shift


def _best(label: str, step: Callable[[], object], repeats: int = 3) -> None:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    print(f"{label:<55} {best:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.columns)) + 10.0
    table = Table({f"c{j}": x[:, j] for j in range(args.columns)})
    columns = list(table.columns)
    pca, kmeans = get_app("pca"), get_app("kmeans")
    pca_params = pca.parse_params({"columns": columns})
    km_params = kmeans.parse_params({"columns": columns, "k": 5})
    centers = x[:5].copy()

    def ctx(min_count: int = 1) -> SiteContext:
        return SiteContext("site", min_count=min_count)

    def pooled_cross() -> None:
        centred = x - x.mean(axis=0)
        centred.T @ centred

    def plain_lloyd() -> None:
        labels, _ = nearest(x, centers)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, x)

    print(f"{args.rows} rows x {args.columns} columns")
    _best("baseline: centred XᵀX of the whole matrix", pooled_cross)
    _best("pca factor (in the clear)", lambda: pca.local_factor(table, pca_params, Empty(), ctx()))
    _best("pca shift (secure)", lambda: pca.local_shift(table, pca_params, Empty(), ctx()))
    _best(
        "pca scatter (secure, double-double)",
        lambda: pca.local_scatter(table, pca_params, Shift(shift=x.mean(axis=0)), ctx()),
    )
    _best(
        "kmeans moments (double-double)",
        lambda: kmeans.local_moments(table, km_params, Empty(), ctx()),
    )
    _best("baseline: nearest centre + np.add.at, whole matrix", plain_lloyd)
    for floor in (1, 5):
        _best(
            f"kmeans lloyd, first round, min_count = {floor}",
            lambda floor=floor: kmeans.local_lloyd(  # type: ignore[misc]
                table, km_params, Centers(centers=centers), ctx(floor)
            ),
        )


if __name__ == "__main__":
    main()
