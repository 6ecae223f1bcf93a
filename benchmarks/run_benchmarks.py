"""fedflow benchmarks on local sites. Usage:

    python benchmarks/run_benchmarks.py overhead      # per-round coordinator overhead, 3 sites
    python benchmarks/run_benchmarks.py quickstart    # quickstart wall time vs a pooled script
    python benchmarks/run_benchmarks.py many-sites    # 100 sites x 1,000 rows running stats
    python benchmarks/run_benchmarks.py many-sites --forked   # ... only from the fork server
    python benchmarks/run_benchmarks.py all

Figures go to standard output as Markdown table rows; benchmarks/README.md holds the latest ones.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICKSTART = ROOT / "examples" / "quickstart"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _run(args: list[str], cwd: Path | None = None, **env: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        args,
        check=True,
        cwd=cwd,
        env={**_env(), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def overhead(rounds: int = 500) -> None:
    """Median round time minus the slowest site's compute time, over ``rounds`` rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = f'app = "bench_apps:Echo"\n[params]\nrounds = {rounds}\n'
        for site in ("berlin", "vienna", "zurich"):
            text += f'[[clients]]\nname = "{site}"\ndata = ["{QUICKSTART / (site + ".csv")}"]\n'
        (folder / "study.toml").write_text(text)
        _run(
            [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", "run", "-q"],
            cwd=folder,
        )
        metrics = json.loads((folder / "run" / "metrics.json").read_text())
    rounds_ = metrics["rounds"][1:]  # the first round includes one-time warm-up
    total = [r["seconds"] * 1000 for r in rounds_]
    over = [
        (r["seconds"] - max(s["compute_seconds"] for s in r["sites"].values())) * 1000
        for r in rounds_
    ]
    print(
        f"| per-round time, 3 local sites ({len(rounds_)} rounds) | median {statistics.median(total):.3f} ms, p95 {np.percentile(total, 95):.3f} ms |"
    )
    print(
        f"| per-round coordinator overhead (round minus slowest site's compute) | median {statistics.median(over):.3f} ms, p95 {np.percentile(over, 95):.3f} ms |"
    )


POOLED_SCRIPT = """
import pandas as pd, statsmodels.api as sm
frames = [pd.read_csv(f"{QS}/{s}.csv") for s in ("berlin", "vienna", "zurich")]
d = pd.concat(frames, ignore_index=True)
x = sm.add_constant(d[["radius", "texture", "smoothness", "concavity", "symmetry"]])
fit = sm.Logit(d["malignant"], x).fit(method="newton", disp=False)
print(fit.summary2())
"""


def quickstart(repeats: int = 5) -> None:
    """Median wall time of `fedflow run` on the quickstart vs a plain pooled statsmodels script."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "pooled.py"
        script.write_text(POOLED_SCRIPT.replace("{QS}", str(QUICKSTART)))
        fed, fed_cmp, pooled = [], [], []
        run = [sys.executable, "-m", "fedflow.cli", "run", str(QUICKSTART / "study.toml"), "-q"]
        for i in range(repeats):
            fed.append(_run([*run, "--out", f"{tmp}/r{i}"]))
            fed_cmp.append(_run([*run, "--out", f"{tmp}/c{i}", "--compare"]))
            pooled.append(_run([sys.executable, str(script)]))
    f, c, p = (statistics.median(x) for x in (fed, fed_cmp, pooled))
    print(
        f"| quickstart `fedflow run` (3 site processes) | median {f:.2f} s ({f / p:.2f}x the pooled script) |"
    )
    print(f"| quickstart `fedflow run --compare` | median {c:.2f} s ({c / p:.2f}x) |")
    print(f"| plain pooled script (pandas + statsmodels Logit) | median {p:.2f} s |")


def many_sites(n_sites: int = 100, rows: int = 1000, *, fresh: bool = True) -> None:
    """Wall time and per-site peak RSS for ``n_sites`` local sites running `stats`."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = 'app = "stats"\ntimeout = 600\n'
        for i in range(n_sites):
            x = rng.normal(size=(rows, 3))
            np.savetxt(
                folder / f"s{i}.csv", x, delimiter=",", header="a,b,c", comments="", fmt="%.6f"
            )
            text += f'[[clients]]\nname = "s{i}"\ndata = ["s{i}.csv"]\n'
        (folder / "study.toml").write_text(text)
        variants = [("forked from one pre-imported process", "1")]
        if fresh:
            variants.append(("fresh interpreters", "0"))
        for label, forkserver in variants:
            out = f"run-{forkserver}"
            wall = _run(
                [sys.executable, "-m", "fedflow.cli", "run", "study.toml", "--out", out, "-q"],
                cwd=folder,
                FEDFLOW_FORKSERVER=forkserver,
            )
            metrics = json.loads((folder / out / "metrics.json").read_text())
            rss = [s["peak_rss_bytes"] / 2**20 for s in metrics["sites"].values()]
            phases = {p["name"]: p["seconds"] for p in metrics["phases"]}
            print(
                f"| {n_sites} local sites x {rows} rows, `stats`, {label} | wall {wall:.1f} s "
                f"(start {phases['start sites']:.1f} s, handshake {phases['handshake']:.1f} s); "
                f"peak RSS per site median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB |"
            )


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    print(
        f"<!-- {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, Python {sys.version.split()[0]} -->"
    )
    if what in ("overhead", "all"):
        overhead()
    if what in ("quickstart", "all"):
        quickstart()
    if what in ("many-sites", "all"):
        many_sites(fresh="--forked" not in sys.argv)
