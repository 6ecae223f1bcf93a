"""What a SCAFFOLD site's own state costs per round: writing its control c_i (the digits MLP's
4,810 float64 values) as a safetensors state file — temporary file, fsync, rename, folder fsync —
and pruning the older rounds, then reading it back with its sha256 check (a restarted or resumed
site's read); and the coordinator's exact sum of the sites' n_i·Δc_i (training/app.py
``exact_sum``) beside math.fsum per value, for 3 and 10 sites.

    python benchmarks/site_state_bench.py [--rounds 200] [--values 4810] [--folder /tmp]

The folder decides the figure: fsync's cost is the disk's (and the load's)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fedflow.node.state import FolderStore
from fedflow.training.app import STATE_KEY, exact_sum
from fedflow.training.weights import from_safetensors, to_safetensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--values", type=int, default=64 * 64 + 64 + 64 * 10 + 10)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    writes, reads = [], []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        store = FolderStore(Path(tmp) / "state")
        for k in range(1, args.rounds + 1):
            control = rng.normal(size=args.values)
            name = f"train-r-round-{k}.safetensors"
            started = time.perf_counter()
            digest = hashlib.sha256(control.tobytes()).hexdigest()
            info = {"site": "s", "run": "r", "round": k, "sha256": digest}
            store.write(name, to_safetensors({"control": control}, {STATE_KEY: json.dumps(info)}))
            store.prune("train-r-round-", [f"train-r-round-{k - 1}.safetensors", name])
            writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            arrays, meta = from_safetensors(store.read(name), name)
            check = hashlib.sha256(arrays["control"].tobytes()).hexdigest()
            assert check == json.loads(meta[STATE_KEY])["sha256"]
            reads.append(time.perf_counter() - started)
    p90 = sorted(writes)[int(0.9 * len(writes))]
    print(
        f"{args.values} values, {args.rounds} rounds: write + prune median "
        f"{statistics.median(writes) * 1e3:.2f} ms (p90 {p90 * 1e3:.2f} ms), read + hash check "
        f"median {statistics.median(reads) * 1e3:.2f} ms"
    )
    for sites in (3, 10):
        terms = [rng.normal(size=args.values) for _ in range(sites)]
        for label, add in (("exact_sum", exact_sum), ("math.fsum per value", _fsum_each)):
            times = []
            for _ in range(30):
                started = time.perf_counter()
                add(terms)
                times.append(time.perf_counter() - started)
            print(f"{sites:>2} sites: {label} median {statistics.median(times) * 1e3:.2f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _fsum_each(terms: list[np.ndarray]) -> np.ndarray:
    import math

    return np.array([math.fsum(row) for row in np.stack(terms, axis=1).tolist()])


if __name__ == "__main__":
    main()
