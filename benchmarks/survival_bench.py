"""Kaplan–Meier and Cox through ``fedflow.runtime.simulate``: rounds and wall time, in the clear
and with ``secure = true`` (the real masking protocol), on synthetic survival data.

    python benchmarks/survival_bench.py --rows 100000 --features 10 --sites 4 --decimals 2 --clear-only
    python benchmarks/survival_bench.py --rows 20000 --features 5 --sites 3

Durations are exponential with a log-linear hazard in the features, rounded to ``--decimals``
(0: whole numbers, few distinct times); 70 % of rows have an event. To compare with an earlier
version, run the same command with ``PYTHONPATH`` pointing at that version's ``src``
(``git archive <commit> src | tar -x -C /tmp/old``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from fedflow.apps.base import Table
from fedflow.runtime.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=5)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--decimals", type=int, default=0)
    parser.add_argument("--clear-only", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    n, p = args.rows, args.features
    x = rng.normal(size=(n, p))
    t = np.round(rng.exponential(np.exp(-x @ (np.arange(p) / 20)) * 100) + 0.5, args.decimals)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(p)])
    frame = frame.assign(t=t, e=(rng.random(n) < 0.7).astype(np.int64))
    parts = np.array_split(rng.permutation(n), args.sites)
    sites = {
        f"s{i}": Table.from_pandas(frame.iloc[np.sort(q)].reset_index(drop=True))
        for i, q in enumerate(parts)
    }
    distinct = frame["t"][frame["e"] == 1].nunique()
    print(f"{n} rows, {p} features, {args.sites} sites, {distinct} distinct event times")
    raw = {"duration": "t", "event": "e"}
    for name in ("kaplan-meier", "cox"):
        for secure in (False,) if args.clear_only else (False, True):
            start = time.perf_counter()
            options = {"secure": True} if secure else {}  # earlier versions lack the keyword
            sim = simulate(name, raw, sites, **options)
            wall = time.perf_counter() - start
            mode = "secure" if secure else "clear"
            print(f"{name:13} {mode:6} rounds {sim.rounds:3}  wall {wall:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
