"""Sites at cohort sizes (issue 10). Usage:

    python benchmarks/cohort_bench.py regression [--rows 1000000] [--repeat 3]
        3 local sites × ROWS rows of CSV (5 features + target + 2 unused text columns),
        linear-regression: `fedflow run` wall time vs a pooled pandas read_csv + statsmodels OLS
        script, run alternately; ratio of medians; each site's peak RSS vs its needed columns.
    python benchmarks/cohort_bench.py loader [--rows 1000000] [--repeat 3]
        the loader alone on one such file: rows/s of fedflow (open + load of the 6 needed
        columns) vs pyarrow.csv.read_csv and pandas.read_csv (all columns, their defaults).
    python benchmarks/cohort_bench.py parquet [--rows 20000000]
        one local site holding ROWS rows of Parquet (six float columns), linear-regression:
        wall time and the site's peak RSS.
    python benchmarks/cohort_bench.py huge [--rows 100000000] [--repeat 3] [--baseline SRC]
        the same with ROWS rows generated on the fly into a Parquet file in a temporary folder,
        against DuckDB computing the same sums (every sum(a*b) of the six columns, their sums and
        count: what the regression needs) over the same file in one process, run alternately;
        rows per second, ratios of medians, and the CPU time of each (others may load the
        machine: CPU seconds are steadier than wall time then). With --baseline SRC, the
        fedflow of another tree (PYTHONPATH=SRC, e.g. `git archive` of an earlier commit) runs
        too, in the same rounds.

    python benchmarks/cohort_bench.py site [--rows 10000000] [--repeat 3] [--no-defer]
        one Parquet site's local work in this process, stage by stage (open, Prepare,
        linear-regression's factor), wall and CPU; the values are checked in the factor's pass
        as the site agent does, or with --no-defer in a pass at Prepare; run it with
        PYTHONPATH=<another tree>/src to compare trees.

Data are generated into a temporary folder at each run (never committed). Figures are printed as
Markdown table rows; benchmarks/README.md holds the latest ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FEATURES = [f"x{i}" for i in range(1, 6)]
SITES = ("berlin", "vienna", "zurich")

POOLED = """
import sys
import pandas as pd
import statsmodels.api as sm
frame = pd.concat([pd.read_csv(p) for p in sys.argv[2:]], ignore_index=True)
features = sys.argv[1].split(",")
fit = sm.OLS(frame["y"], sm.add_constant(frame[features])).fit()
print(fit.params.to_dict())
"""


def _csv(path: Path, rows: int, seed: int) -> None:
    """Write ROWS rows: five float features, a float target and two text columns."""
    rng = np.random.default_rng(seed)
    chunk = 250_000
    with pacsv.CSVWriter(
        str(path),
        pa.schema(
            [(f, pa.float64()) for f in FEATURES]
            + [("y", pa.float64()), ("site_note", pa.string()), ("code", pa.string())]
        ),
    ) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, 5))
            y = 0.5 + x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + rng.normal(size=n)
            notes = rng.choice(np.array(["follow-up", "baseline visit", "lost"]), n)
            codes = np.char.add("C", (np.arange(start, start + n) % 9973).astype(str))
            columns = [pa.array(x[:, i]) for i in range(5)]
            columns += [pa.array(y), pa.array(notes), pa.array(codes)]
            writer.write_batch(
                pa.RecordBatch.from_arrays(columns, names=[*FEATURES, "y", "site_note", "code"])
            )


def _study(folder: Path, files: dict[str, Path]) -> Path:
    text = (
        'name = "cohort"\napp = "linear-regression"\n'
        f'[params]\ntarget = "y"\nfeatures = {json.dumps(FEATURES)}\n'
    )
    for site, path in files.items():
        text += f'[[clients]]\nname = "{site}"\ndata = ["{path}"]\n'
    study = folder / "study.toml"
    study.write_text(text)
    return study


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process and its descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fedflow(folder: Path, study: Path, tag: str, src: str | None = None) -> tuple[float, dict]:
    """Run the study; return its wall time and metrics, with ``cpu_seconds`` added: the CPU of
    the whole run (coordinator, fork server and sites). ``src``: run the fedflow of that tree."""
    out = folder / f"run-{tag}"
    cpu = _children_cpu()
    started = time.perf_counter()
    env = None if src is None else {**os.environ, "PYTHONPATH": src}
    subprocess.run(
        [sys.executable, "-m", "fedflow.cli", "run", str(study), "--out", str(out), "-q"],
        check=True,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["cpu_seconds"] = _children_cpu() - cpu
    return wall, metrics


def regression(rows: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {s: folder / f"{s}.csv" for s in SITES}
        for seed, path in enumerate(files.values()):
            _csv(path, rows, seed)
        size = files["berlin"].stat().st_size
        study = _study(folder, files)
        pooled = [sys.executable, "-c", POOLED, ",".join(FEATURES), *map(str, files.values())]
        fed, ref, rss, phases, fed_cpu, ref_cpu = [], [], [], {}, [], []
        for i in range(repeat):
            wall, metrics = _fedflow(folder, study, str(i))
            fed.append(wall)
            fed_cpu.append(metrics["cpu_seconds"])
            rss.extend(s["peak_rss_bytes"] for s in metrics["sites"].values())
            phases = {p["name"]: p["seconds"] for p in metrics["phases"]}
            cpu = _children_cpu()
            started = time.perf_counter()
            subprocess.run(pooled, check=True, stdout=subprocess.DEVNULL)
            ref.append(time.perf_counter() - started)
            ref_cpu.append(_children_cpu() - cpu)
        needed = rows * (len(FEATURES) + 1) * 8
        print(f"| 3 sites × {rows:,} rows CSV ({size / 1e6:.0f} MB each), linear-regression |")
        print(f"| fedflow run: median {statistics.median(fed):.2f} s (runs {_list(fed)}) |")
        print(
            f"| pooled pandas + statsmodels: median {statistics.median(ref):.2f} s ({_list(ref)}) |"
        )
        print(f"| ratio of medians: {statistics.median(fed) / statistics.median(ref):.2f}× |")
        print(
            f"| CPU (all processes), medians: fedflow {statistics.median(fed_cpu):.2f} s "
            f"({_list(fed_cpu)}), pooled {statistics.median(ref_cpu):.2f} s ({_list(ref_cpu)}); "
            f"ratio {statistics.median(fed_cpu) / statistics.median(ref_cpu):.2f}× |"
        )
        print(
            f"| phases of the last run: {', '.join(f'{k} {v:.2f} s' for k, v in phases.items())} |"
        )
        print(
            f"| site peak RSS: median {statistics.median(rss) / 2**20:.0f} MiB, max "
            f"{max(rss) / 2**20:.0f} MiB; needed columns as float64 {needed / 2**20:.0f} MiB |"
        )


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def loader(rows: int, repeat: int) -> None:
    from fedflow.node.data import open_files, prepare_streamed

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.csv"
        _csv(path, rows, 0)
        needed = [*FEATURES, "y"]

        def opened() -> Any:
            """Open the file as Setup does: its sha256 starts on a thread (this tree)."""
            source = open_files([path])
            getattr(source, "start_fingerprints", lambda: None)()
            return source

        def hashed(source: Any) -> None:
            """Wait for the sha256, as the site does before its first result."""
            if hasattr(source, "fingerprints"):
                assert source.fingerprints()[0].sha256

        def ours() -> None:
            source = opened()
            source.load(needed)
            hashed(source)

        def ours_streamed() -> None:
            source = opened()
            kinds = dict.fromkeys(needed, "numeric")
            prepare_streamed(source, kinds, dropna=True, min_count=5, memory_limit=1 << 40)
            hashed(source)

        def ours_setup() -> None:
            open_files([path])

        def ours_setup_hash() -> None:
            source = opened()
            hashed(source)

        def arrow() -> None:
            pacsv.read_csv(path)

        def pandas() -> None:
            import pandas as pd

            pd.read_csv(path)

        timings: dict[str, list[tuple[float, float]]] = {}
        for _ in range(repeat):
            for name, fn in (
                ("fedflow open + load 6 columns (whole table) + sha256", ours),
                ("fedflow open + streamed Prepare of 6 columns (cached) + sha256", ours_streamed),
                ("fedflow open only (Setup: rows, kinds)", ours_setup),
                ("fedflow open + sha256 (nothing to overlap with)", ours_setup_hash),
                ("pyarrow.csv.read_csv (all columns)", arrow),
                ("pandas.read_csv (all columns)", pandas),
            ):
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                timings.setdefault(name, []).append(
                    (time.perf_counter() - wall, time.process_time() - cpu)
                )
        size = path.stat().st_size
        print(f"| loader, one CSV of {rows:,} rows × 8 columns ({size / 1e6:.0f} MB) |")
        for name, values in timings.items():
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            print(
                f"| {name}: median {wall:.2f} s, {rows / wall / 1e6:.2f} M rows/s "
                f"(CPU {cpu:.2f} s) |"
            )


def _parquet_file(path: Path, rows: int) -> None:
    """Write ROWS rows of six float columns (five features and the target), a million at a time."""
    rng = np.random.default_rng(0)
    schema = pa.schema([(f, pa.float64()) for f in [*FEATURES, "y"]])
    with pq.ParquetWriter(path, schema) as writer:
        chunk = 1_000_000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, 5))
            y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + rng.normal(size=n)
            writer.write_batch(
                pa.RecordBatch.from_arrays(
                    [pa.array(x[:, i]) for i in range(5)] + [pa.array(y)],
                    schema=schema,
                )
            )


def _sha256(path: Path) -> str:
    """The file's sha256, to check the one each run's manifest records."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _solo(
    folder: Path, path: Path, rows: int, tag: str = "0", src: str | None = None
) -> tuple[float, dict]:
    """Run linear-regression at one site holding ``path``; return the wall time and metrics."""
    return _fedflow(folder, _study(folder, {"solo": path}), tag, src)


def _phases(metrics: dict) -> str:
    phases = {p["name"]: p["seconds"] for p in metrics["phases"]}
    phases["factor round"] = sum(r["seconds"] for r in metrics["rounds"])
    return ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())


def _print_solo(path: Path, rows: int, wall: float, metrics: dict) -> None:
    site = metrics["sites"]["solo"]
    needed = rows * 6 * 8
    print(f"| one site × {rows:,} rows Parquet ({path.stat().st_size / 1e6:.0f} MB), six floats |")
    print(f"| wall {wall:.1f} s, CPU {metrics['cpu_seconds']:.1f} s; {_phases(metrics)} |")
    print(
        f"| site peak RSS {site['peak_rss_bytes'] / 2**20:.0f} MiB; needed columns as float64 "
        f"{needed / 2**20:.0f} MiB; {rows / wall / 1e6:.2f} M rows/s end to end |"
    )


def parquet(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "site.parquet"
        _parquet_file(path, rows)
        _print_solo(path, rows, *_solo(folder, path, rows))


def site(rows: int, repeat: int, defer: bool = True) -> None:
    """A Parquet site's local work in this process, stage by stage: Setup (open: the schema;
    trees before 2026-12-01 06:40 also hash the file there), Prepare and linear-regression's
    factor (one pass and the QR; since then the sha256 runs on a thread from Setup on, and this
    stage includes waiting for it); wall and CPU seconds, medians
    of ``repeat``. With ``defer`` (what the site agent does), Prepare reads only the schema and
    the factor's pass checks the values; without (``--no-defer``), Prepare makes a pass of its
    own typing and checking the six columns."""
    from fedflow.apps.base import Empty, SiteContext
    from fedflow.apps.linear import LinearRegression
    from fedflow.node.data import open_files, prepare_streamed

    app = LinearRegression()
    params = app.parse_params({"target": "y", "features": FEATURES})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.parquet"
        _parquet_file(path, rows)
        timings: dict[str, list[tuple[float, float]]] = {}
        for _ in range(repeat):
            stages = {}
            for stage in ("open", "prepare", "factor"):
                wall, cpu = time.perf_counter(), time.process_time()
                if stage == "open":
                    source = open_files([path])
                    if hasattr(source, "start_fingerprints"):  # sha256 while the site reads
                        source.start_fingerprints()
                elif stage == "prepare":
                    table = prepare_streamed(
                        source,
                        app.columns(params),
                        dropna=False,
                        min_count=5,
                        memory_limit=1 << 30,
                        defer=defer,
                    )
                else:
                    reply = app.local_factor(table, params, Empty(), SiteContext("s"))
                    table.ensure_checked()  # as the site does before replying: a no-op here
                    assert table.checked
                    if hasattr(source, "fingerprints"):  # and waits for the file's sha256
                        assert source.fingerprints()[0].sha256
                stages[stage] = (time.perf_counter() - wall, time.process_time() - cpu)
            for stage, value in stages.items():
                timings.setdefault(stage, []).append(value)
        how = "checks in the factor's pass" if defer else "checks in a pass at Prepare"
        print(
            f"| one site's local work, {rows:,} rows Parquet ({path.stat().st_size / 1e6:.0f} MB), "
            f"{how} |"
        )
        for stage, values in timings.items():
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            speed = f"{rows / wall / 1e6:.1f} M rows/s" if wall >= 0.01 else "no pass over the rows"
            print(f"| {stage}: median wall {wall:.2f} s, CPU {cpu:.2f} s, {speed} |")
        print(f"<!-- R[-1, -1] = {reply.r[-1, -1]!r}, y's M2 = {reply.y_m2!r} -->")


DUCKDB = """
import sys, time, duckdb
columns = sys.argv[2].split(",")
sums = [f"sum({a}*{b})" for i, a in enumerate(columns) for b in columns[i:]]
sums += [f"sum({a})" for a in columns] + ["count(*)"]
duckdb.execute("SET enable_progress_bar = false")
started = time.perf_counter()
duckdb.sql(f"SELECT {', '.join(sums)} FROM read_parquet('{sys.argv[1]}')").fetchall()
print(time.perf_counter() - started)
"""


def huge(rows: int, repeat: int, baseline: str | None = None) -> None:
    """fedflow (one site, linear-regression) and DuckDB's sums over the same Parquet file, run
    alternately ``repeat`` times; ratios of medians. ``baseline``: also run the fedflow of
    that tree's ``src`` folder in each round, and give its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "site.parquet"
        started = time.perf_counter()
        _parquet_file(path, rows)
        print(f"| generated in {time.perf_counter() - started:.0f} s |")
        started = time.perf_counter()
        digest = _sha256(path)
        print(
            f"<!-- sha256 of the file alone, in this process: {time.perf_counter() - started:.1f} s -->"
        )
        walls, rounds, cpus, rss, queries, outers, duck_cpus = [], [], [], [], [], [], []
        metrics: dict = {}
        before: list[float] = []
        before_cpus: list[float] = []
        for i in range(repeat):
            if baseline is not None:
                wall, old = _solo(folder, path, rows, f"baseline-{i}", baseline)
                before.append(wall)
                before_cpus.append(old["cpu_seconds"])
                print(f"<!-- baseline run {i}: wall {wall:.1f} s, {_phases(old)} -->")
            wall, metrics = _solo(folder, path, rows, str(i))
            manifest = json.loads((folder / f"run-{i}" / "manifest.json").read_text())
            assert manifest["sites"]["solo"]["files"][0]["sha256"] == digest, "wrong fingerprint"
            walls.append(wall)
            rounds.append(sum(r["seconds"] for r in metrics["rounds"]))
            cpus.append(metrics["cpu_seconds"])
            rss.append(metrics["sites"]["solo"]["peak_rss_bytes"])
            print(f"<!-- fedflow run {i}: wall {wall:.1f} s, {_phases(metrics)} -->")
            cpu = _children_cpu()
            started = time.perf_counter()
            inner = subprocess.run(
                [sys.executable, "-c", DUCKDB, str(path), ",".join([*FEATURES, "y"])],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            outers.append(time.perf_counter() - started)
            duck_cpus.append(_children_cpu() - cpu)
            queries.append(float(inner.split()[-1]))
        _print_solo(path, rows, walls[-1], metrics)
        wall, query, round_ = (statistics.median(v) for v in (walls, queries, rounds))
        print(
            f"| fedflow, {repeat} runs: wall median {wall:.1f} s ({_list(walls)}), "
            f"{rows / wall / 1e6:.2f} M rows/s; the factor round alone median {round_:.1f} s "
            f"({_list(rounds)}); CPU of the whole run median {statistics.median(cpus):.1f} s; "
            f"site peak RSS max {max(rss) / 2**20:.0f} MiB |"
        )
        print(
            f"| DuckDB, the same sums over the same file in one process, run alternately: query "
            f"median {query:.1f} s ({_list(queries)}), {rows / query / 1e6:.2f} M rows/s; "
            f"process median {statistics.median(outers):.1f} s, CPU {statistics.median(duck_cpus):.1f} s |"
        )
        if before:
            old_wall = statistics.median(before)
            print(
                f"| baseline fedflow ({baseline}), run alternately: wall median {old_wall:.1f} s "
                f"({_list(before)}), {old_wall / query:.2f}× the DuckDB query; CPU median "
                f"{statistics.median(before_cpus):.1f} s |"
            )
        print(
            f"| fedflow / DuckDB query, ratio of medians: end to end {wall / query:.2f}×; "
            f"the factor round (one streaming pass and the site's QR) {round_ / query:.2f}× |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["regression", "loader", "parquet", "huge", "site"])
    parser.add_argument("--rows", type=int)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--baseline", metavar="SRC", help="huge: also run the fedflow of this src folder"
    )
    parser.add_argument(
        "--no-defer", action="store_true", help="site: check the values in a pass at Prepare"
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(f"<!-- load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())} -->")
    if args.what == "regression":
        regression(args.rows or 1_000_000, args.repeat)
    elif args.what == "loader":
        loader(args.rows or 1_000_000, args.repeat)
    elif args.what == "parquet":
        parquet(args.rows or 20_000_000)
    elif args.what == "site":
        site(args.rows or 10_000_000, args.repeat, defer=not args.no_defer)
    else:
        huge(args.rows or 100_000_000, args.repeat, args.baseline)
    print(f"<!-- load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())} -->")


if __name__ == "__main__":
    main()
