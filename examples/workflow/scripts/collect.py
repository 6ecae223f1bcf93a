"""Collect the verdicts of `fedflow run --compare` into one table, one row per cell.

    python collect.py --out results/comparisons.csv runs/<app>/<split>/<sites> ...

Each run directory is named ``.../<app>/<split>/<sites>`` (the workflow's layout). The row holds
what the run directory says: the verdict and counts of comparison.json, the reference library,
the rows per site, rounds, duration and bytes of manifest.json and metrics.json. A directory
without comparison.json, or whose manifest names another app or site count than its path, is
refused with a one-line error naming it.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = [
    "app",
    "split",
    "sites",
    "verdict",
    "compared",
    "mismatched",
    "missing",
    "max_rel_diff",
    "worst",
    "reference",
    "rows_min",
    "rows_max",
    "rounds",
    "seconds",
    "bytes_from_sites",
    "run_dir",
]


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(
            f"collect.py: {path} is missing (was the run made with --compare?)"
        ) from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"collect.py: {path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SystemExit(f"collect.py: {path}: not a JSON object")
    return doc


def row(run_dir: Path) -> dict[str, Any]:
    """The table row of one run directory ``.../<app>/<split>/<sites>``."""
    app, split, sites_text = run_dir.parts[-3:]
    if not sites_text.isdigit():
        raise SystemExit(f"collect.py: {run_dir}: expected .../<app>/<split>/<sites>")
    manifest = read_json(run_dir / "manifest.json")
    comparison = read_json(run_dir / "comparison.json")
    metrics = read_json(run_dir / "metrics.json")
    sites = manifest.get("sites") or {}
    if manifest.get("app") != app:
        raise SystemExit(f"collect.py: {run_dir}: manifest.json says app {manifest.get('app')!r}")
    if len(sites) != int(sites_text):
        raise SystemExit(f"collect.py: {run_dir}: manifest.json lists {len(sites)} sites")
    rows = [int(s.get("rows_used", s.get("rows", 0))) for s in sites.values()]
    bad = [i for i in comparison.get("items", []) if not i.get("match")]
    worst = "; ".join(
        f"{i['path']}: missing from the {i['missing']} result"
        if i.get("missing")
        else f"{i['path']}: {i['federated']} vs {i['centralized']}"
        for i in bad[:3]
    )
    site_metrics = metrics.get("sites") or {}
    return {
        "app": app,
        "split": split,
        "sites": int(sites_text),
        "verdict": comparison["status"],
        "compared": comparison.get("compared"),
        "mismatched": comparison.get("mismatched"),
        "missing": comparison.get("missing"),
        "max_rel_diff": comparison.get("max_rel_diff"),
        "worst": worst,
        "reference": comparison.get("reference"),
        "rows_min": min(rows),
        "rows_max": max(rows),
        "rounds": manifest.get("rounds"),
        "seconds": manifest.get("duration_seconds"),
        "bytes_from_sites": sum(int(m.get("bytes_from_site", 0)) for m in site_metrics.values()),
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories")
    args = parser.parse_args()
    rows = [row(run) for run in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
