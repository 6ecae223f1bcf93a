"""Build the workflow's summary report: one self-contained HTML page with the comparison table
and two plots (also written as PNG files beside it).

    python summary_report.py results/comparisons.csv --out results/summary.html \
        [--splits '{"iid": {"mode": "iid"}}']

* ``max_rel_diff.png``: for each app (row) and split x site count (column), the largest relative
  difference between the federated and the pooled result over every compared number, with the
  verdict of ``fedflow run --compare``.
* ``tolerance_use.png``: every compared number's distance from its pooled value as a fraction of
  the tolerance it was held to, ``|fed - pooled| / (atol + rtol * |pooled|)``; 1 is the edge of
  the tolerance. Numbers equal to the digit are drawn at the floor of the axis. Groups that
  comparison.json summarises (more than 50 values under one key) enter only with their
  mismatches, as comparison.json lists only those.

A run directory holding a ``report.html`` (``fedflow report RUN_DIR``) is linked from its row.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLOOR = 1e-12
"""Where a tolerance use of 0 (federated equal to pooled) is drawn on the log axis."""


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"summary_report.py: {path} has no rows")
    return rows


def cell_label(row: dict[str, str]) -> str:
    return f"{row['split']}\n{row['sites']} sites"


def ordered(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def grid_plot(rows: list[dict[str, str]], out: Path) -> None:
    """Apps x (split, sites): log10 of the largest relative difference, with the verdict."""
    apps = ordered([r["app"] for r in rows])
    cells = ordered([cell_label(r) for r in rows])
    values = [[math.nan] * len(cells) for _ in apps]
    fig, ax = plt.subplots(figsize=(1.3 * len(cells) + 2.5, 0.8 * len(apps) + 1.8))
    for r in rows:
        i, j = apps.index(r["app"]), cells.index(cell_label(r))
        rel = float(r["max_rel_diff"])
        values[i][j] = math.log10(max(rel, 1e-17)) if math.isfinite(rel) else 0.0
    image = ax.imshow(values, cmap="viridis", vmin=-17, vmax=0, aspect="auto")
    for r in rows:
        i, j = apps.index(r["app"]), cells.index(cell_label(r))
        rel = float(r["max_rel_diff"])
        match = r["verdict"] == "match"
        text = f"{rel:.0e}\n{'match' if match else 'MISMATCH'}"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if values[i][j] < -8 else "black",
            fontweight="normal" if match else "bold",
        )
        if not match:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    ax.set_xticks(range(len(cells)), cells, fontsize=8)
    ax.set_yticks(range(len(apps)), apps)
    ax.set_title("largest relative difference, federated vs pooled")
    fig.colorbar(image, ax=ax, label="log10 max. relative difference")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def tolerance_uses(comparison: dict[str, Any]) -> list[tuple[float, bool]]:
    """(|fed - pooled| / (atol + rtol |pooled|), match) of every listed numeric item."""
    uses = []
    for item in comparison.get("items", []):
        diff = item.get("abs_diff")
        if diff is None or item.get("missing"):
            continue
        allowed = item["atol"] + item["rtol"] * abs(float(item["centralized"]))
        use = diff / allowed if allowed > 0 else (0.0 if diff == 0 else math.inf)
        uses.append((use, bool(item["match"])))
    return uses


def tolerance_plot(rows: list[dict[str, str]], out: Path) -> int:
    """One panel per app: each cell's tolerance uses; return how many values were drawn."""
    apps = ordered([r["app"] for r in rows])
    cells = ordered([cell_label(r) for r in rows])
    ncols = min(2, len(apps))
    nrows = math.ceil(len(apps) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * (0.55 * len(cells) + 2.2), nrows * 3.4 + 0.6),
        sharey=True,
        squeeze=False,
    )
    drawn = 0
    top = 10.0
    for n, ax in enumerate(axes.flat):
        if n >= len(apps):
            ax.set_visible(False)
            continue
        app = apps[n]
        for r in (r for r in rows if r["app"] == app):
            comparison = json.loads(Path(r["run_dir"], "comparison.json").read_text("utf-8"))
            uses = tolerance_uses(comparison)
            x = cells.index(cell_label(r))
            for k, (use, match) in enumerate(uses):
                shown = min(max(use, FLOOR), 1e6)
                top = max(top, shown * 3)
                jitter = ((k * 0.618) % 1.0 - 0.5) * 0.5
                ax.plot(
                    x + jitter,
                    shown,
                    "o" if match else "x",
                    ms=3 if match else 6,
                    color="tab:blue" if match else "tab:red",
                    alpha=0.6 if match else 1.0,
                )
            drawn += len(uses)
        ax.axhline(1.0, color="darkred", ls="--", lw=1)
        ax.set_yscale("log")
        labels = [c.replace("\n", " · ").replace(" sites", "") for c in cells]
        ax.set_xticks(range(len(cells)), labels, fontsize=7, rotation=40, ha="right")
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set_title(app, fontsize=10)
        if n % ncols == 0:
            ax.set_ylabel("|fed − pooled| / tolerance", fontsize=8)
    axes.flat[0].set_ylim(FLOOR / 3, top)
    fig.suptitle(
        f"every compared number per split · sites: dashed = edge of its tolerance, "
        f"equal ones at {FLOOR:g}, x = mismatch",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def embedded(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(png.name)}">'


def table_html(rows: list[dict[str, str]], out_dir: Path) -> str:
    head = [
        "app", "split", "sites", "rows per site", "verdict", "compared", "mismatched",
        "max. rel. diff.", "first mismatches", "reference", "rounds", "seconds", "run",
    ]  # fmt: skip
    lines = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        run = Path(r["run_dir"])
        link = os.path.relpath(run, out_dir)
        run_cell = f'<a href="{html.escape(link)}">{html.escape(str(run))}</a>'
        if (run / "report.html").is_file():
            report = os.path.relpath(run / "report.html", out_dir)
            run_cell += f' (<a href="{html.escape(report)}">report</a>)'
        verdict = r["verdict"]
        cells = [
            r["app"], r["split"], r["sites"], f"{r['rows_min']}–{r['rows_max']}",
            f'<span class="{verdict}">{verdict}</span>', r["compared"], r["mismatched"],
            f"{float(r['max_rel_diff']):.2e}", html.escape(r["worst"]) or "–",
            html.escape(r["reference"]), r["rounds"], f"{float(r['seconds']):.1f}", run_cell,
        ]  # fmt: skip
        lines.append(f'<tr class="{verdict}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 90em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
span.match { color: #176317; font-weight: bold; }
span.mismatch { color: #b00; font-weight: bold; }
img { max-width: 100%; margin: 1em 0; }
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path, help="results/comparisons.csv (collect.py)")
    parser.add_argument("--out", type=Path, required=True, help="the HTML page to write")
    parser.add_argument("--splits", default="{}", help="the split schemes, as JSON, to describe")
    args = parser.parse_args()
    rows = read_table(args.table)
    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    grid, tolerance = out_dir / "max_rel_diff.png", out_dir / "tolerance_use.png"
    grid_plot(rows, grid)
    drawn = tolerance_plot(rows, tolerance)

    matches = sum(r["verdict"] == "match" for r in rows)
    splits = json.loads(args.splits)
    split_items = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(json.dumps(spec))}</li>"
        for name, spec in splits.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fedflow: federated vs pooled</title><style>{STYLE}</style></head>
<body>
<h1>Federated vs pooled</h1>
<p>{len(rows)} runs of <code>fedflow run --compare</code>: <b>{matches} match</b> their pooled
reference, <b>{len(rows) - matches} do not</b>. Apps: {html.escape(", ".join(ordered([r["app"] for r in rows])))};
site counts: {html.escape(", ".join(ordered([r["sites"] for r in rows])))}.</p>
{f"<p>Split schemes (fedflow split):</p><ul>{split_items}</ul>" if split_items else ""}
<h2>Comparisons</h2>
{table_html(rows, out_dir)}
<h2>Largest relative difference</h2>
{embedded(grid)}
<h2>Distance to the tolerance</h2>
<p>{drawn} compared numbers, each as its distance from the pooled value divided by the tolerance
it was held to (<code>atol + rtol × |pooled|</code>); the dashed line is the edge of the
tolerance.</p>
{embedded(tolerance)}
</body></html>
"""
    args.out.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
