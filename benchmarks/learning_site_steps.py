"""Time the site steps of kmeans and pca on one site's rows, streamed in batches (the default
64 Ki rows), in the clear and in their secure formulations (double-double sums).

    python benchmarks/learning_site_steps.py [--rows 1000000] [--columns 5]
    python benchmarks/learning_site_steps.py --runs --rows 3000000

Prints the best of three wall times of each step, next to plain numpy baselines over the whole
matrix (the work the step replaces). With ``--runs``: writes two sites of ``--rows`` rows each
(Parquet, in a temporary folder), runs ``fedflow run`` for pca (in the clear and with
``--secure``) and kmeans (k = 2, max_iter = 2, with ``--secure``), and prints each run's wall
time and each site's peak RSS (``metrics.json``) next to the size of its columns as float64.
Figures depend on the machine's load: give ``uptime``'s load average with them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from fedflow.apps import get_app
from fedflow.apps.base import Empty, SiteContext, Table
from fedflow.apps.kmeans import Centers, nearest


def _best(label: str, step: Callable[[], object], repeats: int = 3) -> None:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    print(f"{label:<55} {best:7.3f} s")


def runs(rows: int, columns: int) -> None:
    """Whole local runs on two Parquet sites: wall time and each site's peak RSS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    names = [f"c{j}" for j in range(columns)]
    with tempfile.TemporaryDirectory() as folder:
        for i, site in enumerate(["a", "b"]):
            x = rng.normal(size=(rows, columns)) @ rng.normal(size=(columns, columns)) + 10 * i
            pq.write_table(
                pa.table({c: x[:, j] for j, c in enumerate(names)}), f"{folder}/{site}.parquet"
            )
        clients = "".join(
            f'\n[[clients]]\nname = "{s}"\ndata = ["{s}.parquet"]\n' for s in ("a", "b")
        )
        listed = ", ".join(f'"{c}"' for c in names)
        studies = {
            "pca": f'name = "pca"\napp = "pca"\nmin_count = 1\n[params]\ncolumns = [{listed}]\n',
            "kmeans": (
                f'name = "kmeans"\napp = "kmeans"\nmin_count = 1\n[params]\ncolumns = [{listed}]\n'
                "k = 2\nmax_iter = 2\n"
            ),
        }
        for app, text in studies.items():
            with open(f"{folder}/{app}.toml", "w") as handle:
                handle.write(text + clients)
        print(
            f"2 sites x {rows} rows x {columns} columns: {rows * columns * 8 / 2**20:.0f} MiB "
            "as float64 per site"
        )
        for app, flags in (("pca", []), ("pca", ["--secure"]), ("kmeans", ["--secure"])):
            out = f"{folder}/out-{app}{''.join(flags)}"
            started = time.perf_counter()
            command = [sys.executable, "-m", "fedflow", "run", f"{folder}/{app}.toml"]
            done = subprocess.run(
                [*command, *flags, "--out", out], capture_output=True, text=True, check=False
            )
            if done.returncode:
                raise SystemExit(f"fedflow run {app} {' '.join(flags)} failed:\n{done.stderr}")
            wall = time.perf_counter() - started
            with open(f"{out}/metrics.json") as handle:
                sites = json.load(handle)["sites"]
            peaks = ", ".join(
                f"{s} {v['peak_rss_bytes'] / 2**20:.0f} MiB" for s, v in sites.items()
            )
            print(f"{app} {' '.join(flags):<9} {wall:6.1f} s   site peak RSS: {peaks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=5)
    parser.add_argument("--runs", action="store_true", help="whole runs: wall time, site RSS")
    args = parser.parse_args()
    if args.runs:
        runs(args.rows, args.columns)
        return
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
    _best("pca gram (secure, exact)", lambda: pca.local_gram(table, pca_params, Empty(), ctx()))
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
