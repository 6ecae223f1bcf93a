"""fedflow's `secure = true` beside Flower's SecAgg+ workflow: one vector summed over n sites.

    bash benchmarks/peers/setup_flower.sh          # once: Flower's own venv, outside the repo
    python benchmarks/secagg_vs_flower.py          # 3, 10 sites x 10, 10^4 values; 5 rounds
    python benchmarks/secagg_vs_flower.py --lengths 10 10000 1000000 --repeat 3
    python benchmarks/secagg_vs_flower.py --only flower     # or --only fedflow
    python benchmarks/secagg_vs_flower.py --dropout         # fedflow with dropout recovery

fedflow runs analytics' secure aggregation by default: one exchange a round, pairwise masks
under keys agreed once per run, no dropout recovery (a dropped site ends the run). Flower's
SecAgg+ always carries dropout recovery (self masks, Shamir shares, an unmasking stage); with
``--dropout`` fedflow runs its dropout-tolerant protocol too (four exchanges a round: keys,
shares, masked vector, reveal), the like-for-like comparison.

For each (sites, length) the two run one after the other (fedflow first, then Flower), `--repeat`
times, alternately. Both sum the same float64 vectors (site i holds sin(0.001·j + i), j < length)
for `--rounds` rounds, every site in every round, with a Shamir threshold of a majority and every
site sharing its secrets with all others (Flower: `num_shares = 1.0`).

- fedflow: `fedflow run` of the summed plug-in app `SecureVector` (below) with `secure = true` on
  local sites (processes on this machine). Round time and bytes per site come from the run's
  metrics.json (bytes each site's connector sent and received: the site's whole secure round).
- Flower: benchmarks/peers/flower_secagg.py in Flower's venv (simulation engine, Ray): round time
  of `SecAggPlusWorkflow` in the ServerApp, bytes = protobuf size of each message to and from a
  node.

The table gives the median round time over rounds 2.. (round 1 carries start-up: Ray's start in
Flower's case, the sites' handshake in fedflow's), the whole run's wall time, the bytes per site
and round, the largest error of the mean against an exact sum, and ratios fedflow / Flower.
Set FEDFLOW_FLOWER_VENV when the venv is not at ~/.cache/fedflow/peers/flower.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
    sum_replies,
)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"


def site_vector(index: int, length: int) -> np.ndarray:
    """Site ``index``'s vector (the same as flower_secagg.client_vector)."""
    return np.sin(np.arange(length, dtype=np.float64) * 0.001 + index)


def exact_mean(sites: int, length: int) -> np.ndarray:
    """The mean over sites of their vectors, summed in extended precision, rounded once."""
    total = np.zeros(length, dtype=np.longdouble)
    for i in range(sites):
        total += site_vector(i, length).astype(np.longdouble)
    return np.asarray(total / sites, dtype=np.float64)


class VectorParams(Params, frozen=True):
    length: int = 10
    rounds: int = 5
    sites: int = 3


class Vector(Payload, frozen=True):
    v: np.ndarray


class SecureVector(App[VectorParams]):
    """Each round every site returns its vector; the coordinator receives only their sum."""

    name = "secure-vector"
    Params = VectorParams
    reference = "numpy"
    secure: ClassVar[bool | str] = True
    phases: ClassVar[Mapping[str, Phase]] = {"vector": Phase(Empty, Vector, summed=True)}

    def columns(self, params: VectorParams) -> dict[str, ColumnKind]:
        return {"index": "numeric"}

    def start(self, params: VectorParams, ctx: CoordinatorContext) -> Continue:
        return Continue("vector", Empty())

    def local_vector(
        self, data: Table, params: VectorParams, request: Empty, ctx: SiteContext
    ) -> Vector:
        index = int(np.asarray(data["index"])[0])
        return Vector(v=site_vector(index, params.length))

    def aggregate_vector(
        self, replies: Mapping[str, Vector], params: VectorParams, ctx: CoordinatorContext
    ) -> Step:
        total = replies[SUM] if ctx.secure else sum_replies(replies, Vector)
        if ctx.round < params.rounds:
            return Continue("vector", Empty())
        error = np.max(np.abs(total.v / params.sites - exact_mean(params.sites, params.length)))
        return Done({"rounds": ctx.round, "max_abs_error": float(error)})

    def centralized(self, pooled: Any, params: VectorParams) -> dict[str, Any]:
        raise NotImplementedError("a benchmark app: no pooled twin")


class SecureVectorDropout(SecureVector):
    """SecureVector through the dropout-tolerant protocol (an app that completes a round with
    the sites that answered, as training does: four exchanges a round)."""

    partial_rounds: ClassVar[bool] = True


def flower_python() -> Path:
    venv = os.environ.get("FEDFLOW_FLOWER_VENV", str(Path.home() / ".cache/fedflow/peers/flower"))
    return Path(venv) / "bin" / "python"


def last_json(text: str, who: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"{who} printed no JSON line")


def run_fedflow(
    sites: int, length: int, rounds: int, secure: bool = True, dropout: bool = False
) -> dict[str, Any]:
    """One `fedflow run` of SecureVector (SecureVectorDropout with ``dropout``) on ``sites``
    local sites; figures from metrics.json."""
    app = "SecureVectorDropout" if dropout else "SecureVector"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = (
            f'name = "secagg-bench"\napp = "secagg_vs_flower:{app}"\n'
            f"secure = {'true' if secure else 'false'}\nseed = 1\n"
            f"[params]\nlength = {length}\nrounds = {rounds}\nsites = {sites}\n"
        )
        for i in range(sites):
            name = f"site{i + 1:02d}"
            (folder / f"{name}.csv").write_text("index\n" + f"{i}\n" * 10)
            text += f'[[clients]]\nname = "{name}"\ndata = ["{name}.csv"]\n'
        (folder / "study.toml").write_text(text)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", "run", "-q"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise RuntimeError(f"fedflow run failed (exit {done.returncode}): {lines[-1]}")
        metrics = json.loads((folder / "run" / "metrics.json").read_text())
        result = json.loads((folder / "run" / "result.json").read_text())
    by_round: dict[int, dict[str, Any]] = {}
    for entry in metrics["rounds"]:
        books = by_round.setdefault(entry["round"], {"seconds": 0.0, "to": {}, "from": {}})
        books["seconds"] += entry["seconds"]
        for name, site in entry["sites"].items():
            books["to"][name] = books["to"].get(name, 0) + site["bytes_to_site"]
            books["from"][name] = books["from"].get(name, 0) + site["bytes_from_site"]
    ordered = [by_round[r] for r in sorted(by_round)]
    seconds = [b["seconds"] for b in ordered]
    later = ordered[1:] or ordered
    return {
        "round_seconds": seconds,
        "median_round_seconds": statistics.median(b["seconds"] for b in later),
        "bytes_to_site_per_round": statistics.median(v for b in later for v in b["to"].values()),
        "bytes_from_site_per_round": statistics.median(
            v for b in later for v in b["from"].values()
        ),
        "max_abs_error": _find(result, "max_abs_error"),
        "wall_seconds": wall,
    }


def _find(tree: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a JSON tree (result.json's layout may nest it)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for value in tree:
            found = _find(value, key)
            if found is not None:
                return found
    return None


def run_flower(sites: int, length: int, rounds: int) -> dict[str, Any]:
    python = flower_python()
    if not python.exists():
        raise RuntimeError(f"{python} missing: run bash benchmarks/peers/setup_flower.sh")
    done = subprocess.run(
        [
            str(python),
            str(PEERS / "flower_secagg.py"),
            f"--sites={sites}",
            f"--length={length}",
            f"--rounds={rounds}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    if done.returncode != 0:
        lines = (done.stderr.strip() or "no output").splitlines()
        raise RuntimeError(f"flower_secagg.py failed (exit {done.returncode}): {lines[-1]}")
    return last_json(done.stdout, "flower_secagg.py")


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:,.1f} ms"


def _kb(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e3:,.1f} kB"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def _err(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", choices=["fedflow", "flower"], help="run one side only")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument(
        "--dropout", action="store_true", help="fedflow with dropout recovery (4 exchanges)"
    )
    args = parser.parse_args()

    def fedflow_side(n: int, length: int, rounds: int) -> dict[str, Any]:
        return run_fedflow(n, length, rounds, dropout=args.dropout)

    print(f"load average before: {os.getloadavg()[0]:.2f}, {os.getloadavg()[1]:.2f}", flush=True)
    mode = "dropout recovery, 4 exchanges" if args.dropout else "one exchange, no dropout recovery"
    print(f"fedflow mode: {mode}", flush=True)
    print(
        "| sites | length | fedflow round | Flower round | ratio | fedflow wall | Flower wall "
        "| ratio | fedflow bytes/site/round (to, from) | Flower (to, from) | ratio (to+from) "
        "| error of the mean: fedflow, Flower |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    everything: list[dict[str, Any]] = []
    for n in args.sites:
        for length in args.lengths:
            runs: dict[str, list[dict[str, Any]]] = {"fedflow": [], "flower": []}
            notes: list[str] = []
            for _ in range(args.repeat):
                for side, call in (("fedflow", fedflow_side), ("flower", run_flower)):
                    if args.only and side != args.only:
                        continue
                    try:
                        runs[side].append(call(n, length, args.rounds))
                    except RuntimeError as exc:
                        notes.append(f"{side}: {exc}")
            row = {side: _median_run(found) for side, found in runs.items()}
            everything.append({"sites": n, "length": length, "runs": runs, "notes": notes})
            f, w = row["fedflow"], row["flower"]
            print(
                f"| {n} | {length:,} | {_ms(f.get('median_round_seconds'))} "
                f"| {_ms(w.get('median_round_seconds'))} "
                f"| {_ratio(f.get('median_round_seconds'), w.get('median_round_seconds'))} "
                f"| {f.get('wall_seconds', 0):.2f} s | {w.get('wall_seconds', 0):.2f} s "
                f"| {_ratio(f.get('wall_seconds'), w.get('wall_seconds'))} "
                f"| {_kb(f.get('bytes_to_site_per_round'))}, {_kb(f.get('bytes_from_site_per_round'))} "
                f"| {_kb(w.get('bytes_to_site_per_round'))}, {_kb(w.get('bytes_from_site_per_round'))} "
                f"| {_ratio(_both(f), _both(w))} "
                f"| {_err(f.get('max_abs_error'))}, {_err(w.get('max_abs_error'))} |",
                flush=True,
            )
            for note in notes:
                print(f"  note ({n} sites × {length:,}): {note}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}, {os.getloadavg()[1]:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


def _both(run: Mapping[str, Any]) -> float | None:
    if "bytes_to_site_per_round" not in run:
        return None
    return float(run["bytes_to_site_per_round"] + run["bytes_from_site_per_round"])


def _median_run(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric figure over repeated runs (empty when the side did not run)."""
    if not found:
        return {}
    keys = [
        "median_round_seconds",
        "wall_seconds",
        "bytes_to_site_per_round",
        "bytes_from_site_per_round",
    ]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in found) for k in keys}
    errors = [r["max_abs_error"] for r in found if r.get("max_abs_error") is not None]
    out["max_abs_error"] = max(errors) if errors else None
    return out


if __name__ == "__main__":
    main()
