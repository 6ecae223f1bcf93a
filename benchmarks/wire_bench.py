"""The wire's cost for a model's weights: encoding a reply that carries N float32 values and
framing it, as a site does every round (and the coordinator, for each site's task).

    python benchmarks/wire_bench.py                          # 1.1M values (a 64-1024-1024-10 MLP)
    python benchmarks/wire_bench.py --values 4810 1100000 --repeat 3 --baseline /tmp/base/src
        # each tree in its own process, alternately; per call, the best of 7 timed batches

A tree with ``frame_header`` writes the length prefix and the payload as two pieces (the
connectors and the agent do); an older tree joins them (``encode_frame``), and that join is
timed as its framing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ONE_TREE = """
import sys, time, timeit
import numpy as np
from fedflow.wire import framing
from fedflow.wire.messages import MessageCodec, Reply

codec = MessageCodec()
weights = np.random.default_rng(0).standard_normal(int(sys.argv[1])).astype(np.float32)
reply = Reply(round=1, payload={"weights": weights}, seconds=0.0)
header = getattr(framing, "frame_header", None)


def once():
    payload = codec.encode(reply)
    return (header(payload), payload) if header else framing.encode_frame(payload)


started = time.perf_counter()
once()
number = max(1, int(0.05 / max(time.perf_counter() - started, 1e-7)))  # about 50 ms a batch
print(min(timeit.repeat(once, number=number, repeat=7)) / number)
"""


def one(src: str, values: int) -> float:
    """Seconds (the best of 7 batches of about 50 ms, per call) to encode and frame a reply of ``values`` float32, with the fedflow
    of source folder ``src``."""
    done = subprocess.run(
        [sys.executable, "-c", ONE_TREE, str(values)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, nargs="+", default=[1_100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", metavar="SRC", help="another tree's src folder")
    args = parser.parse_args()
    trees = {"this tree": str(HERE.parent / "src")}
    if args.baseline:
        trees["baseline"] = args.baseline
    print("| values | " + " | ".join(trees) + (" | this / baseline |" if args.baseline else " |"))
    print("| ---: |" + " ---: |" * (len(trees) + bool(args.baseline)))
    for values in args.values:
        seconds: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, src in trees.items():
                seconds[name].append(one(src, values))
        medians = {name: statistics.median(s) for name, s in seconds.items()}
        cells = [f"{medians[name] * 1e6:,.1f} µs" for name in trees]
        if args.baseline:
            cells.append(f"{medians['this tree'] / medians['baseline']:.2f}")
        print(f"| {values:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
