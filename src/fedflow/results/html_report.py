"""``fedflow report RUN_DIR``: one self-contained HTML page of a run, with its plots.

``write_report(run_dir)`` writes ``RUN_DIR/report.html`` and the plots beside it as
``RUN_DIR/report/<name>.png``; the page embeds every plot as a ``data:`` URI, so it can be mailed
or archived alone. It shows, from the files the run wrote (nothing is recomputed):

1. what ran: the study, app, parameters, seed, versions, command, start and end, and each site's
   data fingerprints (file names, sha256, bytes, rows);
2. the status: a failed or interrupted run says so first, with its error, and shows what it left
   (metrics, the end of each site's log);
3. the result tables (the same layout as the terminal, ``report.result_tables``);
4. with ``--compare``: the verdict and the values that differ most from the pooled reference;
5. the plots (``plots.figures``) and the time and bytes of every phase and site.

Needs matplotlib: ``require_matplotlib()`` raises a one-line StudyError saying what to install.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group

from fedflow._atomic import atomic_write
from fedflow._version import __version__
from fedflow.errors import StudyError
from fedflow.results.report import comparison_line, fmt, render_html, result_tables
from fedflow.results.saved import SavedRun, load_run_dir

__all__ = ["INSTALL_HINT", "REPORT_FILE", "build_html", "require_matplotlib", "write_report"]

REPORT_FILE = "report.html"
INSTALL_HINT = "fedflow report needs matplotlib: pip install 'fedflow-studies[report]'"
LOG_LINES = 20
"""Lines shown from the end of each site's log in the report of a run that did not complete."""
WORST_ITEMS = 15
"""Compared values listed in the report (the largest relative differences first)."""


def require_matplotlib() -> None:
    """Raise StudyError (exit 2, one line saying what to install) when matplotlib is missing."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise StudyError(INSTALL_HINT)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table.facts, table.data { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
table.facts th { text-align: left; padding: 2px 14px 2px 0; vertical-align: top; color: #555; }
table.facts td { padding: 2px 0; }
table.data th, table.data td { border-bottom: 1px solid #eee; padding: 3px 10px; }
table.data th { text-align: left; background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.85rem; }
#result pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace !important;
              line-height: 1.35; }
pre.log { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.status { padding: 0.5em 0.8em; border-radius: 4px; display: inline-block; }
.status.completed { background: #e6f4ea; }
.status.failed, .status.interrupted, .status.running { background: #fde7e7; }
.verdict.match { color: #137333; } .verdict.mismatch { color: #b3261e; font-weight: bold; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; max-width: 900px; }
.muted { color: #666; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _facts(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<table class="facts">{body}</table>'


def _cell(value: Any) -> str:
    """Return a table cell's text: numbers compact, a missing or NaN value as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt(value)


def _data_table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: int = 1) -> str:
    """Return an HTML table; columns from index ``numeric`` on are right-aligned numbers."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [
            f'<td class="num">{_e(_cell(v))}</td>' if i >= numeric else f"<td>{_e(v)}</td>"
            for i, v in enumerate(row)
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="data"><tr>{head}</tr>{"".join(body)}</table>'


def _code(value: Any) -> str:
    return f"<code>{_e(value)}</code>"


def _what_ran(run: SavedRun) -> str:
    m = run.manifest
    study: Mapping[str, Any] = m["study"] if isinstance(m.get("study"), Mapping) else {}
    command = m.get("command")
    params = m.get("params")
    duration = m.get("duration_seconds")
    facts = [
        ("study", _e(study.get("name") or run.name)),
        ("study file", _code(study.get("file")) if study.get("file") else None),
        ("study sha256", _code(study.get("sha256")) if study.get("sha256") else None),
        ("app", _e(run.app or m.get("platform") or "?")),
        ("parameters", _code(json.dumps(params, sort_keys=False)) if params else None),
        ("seed", _e(m.get("seed")) if m.get("seed") is not None else "none"),
        ("secure aggregation", "yes" if m.get("secure") else "no"),
        ("platform", _e(m.get("platform")) if m.get("platform") else None),
        ("rounds", _e(m.get("rounds")) if m.get("rounds") is not None else None),
        ("started", _e(m.get("started")) if m.get("started") else None),
        ("finished", _e(m.get("finished")) if m.get("finished") else None),
        ("duration", f"{duration:.3f} s" if isinstance(duration, (int, float)) else None),
        (
            "versions",
            _e(f"fedflow {m.get('fedflow')}, Python {m.get('python')}, on {m.get('host')}"),
        ),
        ("command", _code(" ".join(str(c) for c in command)) if command else None),
        ("run directory", _code(run.path)),
    ]
    sites = m.get("sites") if isinstance(m.get("sites"), Mapping) else {}
    rows = []
    for name, site in (sites or {}).items():
        site = site if isinstance(site, Mapping) else {}
        files = site.get("files") or [{}]
        for i, f in enumerate(files):
            f = f if isinstance(f, Mapping) else {}
            rows.append(
                [
                    name if i == 0 else "",
                    site.get("kind", "") if i == 0 else "",
                    site.get("host") or site.get("agent_host") or "" if i == 0 else "",
                    f.get("name") or f.get("table") or "",
                    f.get("sha256") or ("unknown" if "sha256_unknown" in f else ""),
                    f.get("bytes", ""),
                    f.get("rows", ""),
                    site.get("rows_used", "") if i == 0 else "",
                ]
            )
    table = (
        "<h3>Sites and their data</h3>"
        + _data_table(
            ["site", "kind", "host", "file", "sha256", "bytes", "rows", "rows used"], rows, 5
        )
        if rows
        else '<p class="muted">The manifest lists no sites.</p>'
    )
    libraries = (run.comparison or {}).get("libraries") or {}
    libs = (
        "<p class='muted'>Reference libraries: "
        + _e(", ".join(f"{k} {v}" for k, v in libraries.items()))
        + "</p>"
        if libraries
        else ""
    )
    return f'<section id="manifest"><h2>What ran</h2>{_facts(facts)}{table}{libs}</section>'


def _status(run: SavedRun) -> str:
    status = run.status
    if status == "completed":
        text = "completed"
    else:
        error = run.error or "no error recorded"
        text = f"{status}: {error}"
        if status == "running":
            text = "running (or stopped without recording an end): the files below are what it had written"
    return f'<p class="status {_e(status)}" id="status">{_e(text)}</p>'


def _result_section(run: SavedRun) -> str:
    if run.result_doc is None:
        return (
            '<section id="result"><h2>Result</h2><p class="muted">No result.json: the run '
            f"{_e(run.status)} before it had a result.</p></section>"
        )
    tables = result_tables(run.result, app=run.app)
    body = render_html(Group(*tables)) if tables else "<p class='muted'>An empty result.</p>"
    notes = "".join(f"<li>{_e(n)}</li>" for n in run.notes)
    notes_html = f"<h3>Notes</h3><ul>{notes}</ul>" if notes else ""
    return f'<section id="result"><h2>Result</h2>{body}{notes_html}</section>'


def _verdict(item: Mapping[str, Any]) -> str:
    if item.get("match"):
        return "yes"
    return f"NO (only in one result: {item['missing']} lacks it)" if item.get("missing") else "NO"


def _comparison_section(run: SavedRun) -> str:
    comparison = run.comparison
    if not comparison:
        return ""
    verdict = comparison_line(comparison)
    status = "match" if comparison.get("status") == "match" else "mismatch"
    items = [i for i in comparison.get("items") or [] if isinstance(i, Mapping)]

    def badness(item: Mapping[str, Any]) -> tuple[int, float]:
        rel = item.get("rel_diff")
        return (0 if item.get("match") else 1, rel if isinstance(rel, (int, float)) else -1.0)

    worst = sorted(items, key=badness, reverse=True)[:WORST_ITEMS]
    rows = [
        [
            i.get("path"),
            i.get("federated"),
            i.get("centralized"),
            i.get("abs_diff"),
            i.get("rel_diff"),
            f"{fmt(i.get('rtol'))} / {fmt(i.get('atol'))}",
            _verdict(i),
        ]
        for i in worst
    ]
    summaries = [s for s in comparison.get("summarised") or [] if isinstance(s, Mapping)]
    summary_rows = [
        [s.get("group"), s.get("compared"), s.get("mismatched"), s.get("max_rel_diff")]
        for s in summaries
    ]
    return (
        '<section id="comparison"><h2>Federated vs pooled</h2>'
        f'<p class="verdict {status}">{_e(verdict)}</p>'
        f"<p class='muted'>The {len(worst)} of {comparison.get('compared')} compared values "
        "with the largest relative differences (every value is in comparison.json):</p>"
        + _data_table(
            ["value", "federated", "pooled", "abs diff", "rel diff", "rtol / atol", "match"],
            rows,
        )
        + (
            "<p class='muted'>Summarised groups:</p>"
            + _data_table(["group", "compared", "mismatched", "max rel diff"], summary_rows)
            if summary_rows
            else ""
        )
        + "</section>"
    )


def _figure_html(figure: Any, data_uri: str | None) -> str:
    image = (
        f'<img src="{data_uri}" alt="{_e(figure.title)}" id="plot-{_e(figure.name)}">'
        if data_uri
        else ""
    )
    return f"<figure><h3>{_e(figure.title)}</h3>{image}<figcaption>{_e(figure.caption)}</figcaption></figure>"


def _timing_section(run: SavedRun, site_totals: Mapping[str, Mapping[str, float]]) -> str:
    phases = [p for p in run.metrics.get("phases") or [] if isinstance(p, Mapping)]
    parts = ['<section id="timing"><h2>Time and bytes</h2>']
    if phases:
        parts.append("<h3>Phases</h3>")
        parts.append(
            _data_table(["phase", "seconds"], [[p.get("name"), p.get("seconds")] for p in phases])
        )
    rounds = [r for r in run.metrics.get("rounds") or [] if isinstance(r, Mapping)]
    if rounds:
        parts.append(
            f"<p>{len(rounds)} round{'s' if len(rounds) != 1 else ''}, "
            f"{sum(float(r.get('seconds') or 0.0) for r in rounds):.3f} s in all.</p>"
        )
    if site_totals:
        parts.append("<h3>Sites</h3>")
        parts.append(
            _data_table(
                [
                    "site",
                    "compute s (rounds)",
                    "CPU s",
                    "bytes to site",
                    "bytes from site",
                    "peak RSS MiB",
                ],
                [
                    [
                        name,
                        t["compute_seconds"],
                        t["cpu_seconds"],
                        _int(t["bytes_to_site"]),
                        _int(t["bytes_from_site"]),
                        t["peak_rss_bytes"] / 2**20,
                    ]
                    for name, t in site_totals.items()
                ],
            )
        )
    if len(parts) == 1:
        parts.append("<p class='muted'>No metrics.json in this run.</p>")
    parts.append("</section>")
    return "".join(parts)


def _int(value: float) -> Any:
    return int(value) if math.isfinite(value) else None


def _logs_section(run: SavedRun) -> str:
    if run.status == "completed":
        return ""
    logs = sorted((run.path / "logs").glob("*.log"))
    if not logs:
        return ""
    parts = ['<section id="logs"><h2>Site logs (last lines)</h2>']
    for log in logs:
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_LINES:]
        except OSError:
            continue
        parts.append(f"<h3>{_e(log.stem)}</h3><pre class='log'>{_e(chr(10).join(lines))}</pre>")
    parts.append("</section>")
    return "".join(parts)


def build_html(run: SavedRun, figures: Sequence[Any], site_totals: Mapping[str, Any]) -> str:
    """Return the report page of ``run`` with ``figures`` embedded as data URIs."""
    title = f"{run.name} — {run.app or run.manifest.get('platform') or 'run'}"
    plots = []
    for figure in figures:
        uri = (
            "data:image/png;base64," + base64.b64encode(figure.png).decode("ascii")
            if figure.png
            else None
        )
        plots.append(_figure_html(figure, uri))
    plots_html = (
        f'<section id="plots"><h2>Plots</h2>{"".join(plots)}</section>'
        if plots
        else '<section id="plots"><h2>Plots</h2><p class="muted">Nothing to plot: the run '
        "left no result, rounds or site metrics.</p></section>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        + _status(run)
        + _what_ran(run)
        + _result_section(run)
        + _comparison_section(run)
        + plots_html
        + _timing_section(run, site_totals)
        + _logs_section(run)
        + f"<p class='muted'>Written by fedflow {_e(__version__)} from {_e(run.path)}.</p>"
        "</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Write ``RUN_DIR/report.html`` (plots embedded) and ``RUN_DIR/report/*.png``; return the
    page's path.

    Raises StudyError (one line, naming the path) when ``run_dir`` is not a run directory or
    cannot be written, or when matplotlib is not installed.
    """
    require_matplotlib()
    run = load_run_dir(run_dir)
    from fedflow.results.plots import figures, site_totals

    drawn = figures(run)
    totals = site_totals(run.metrics)
    folder = run.path / "report"
    target = run.path / REPORT_FILE
    try:
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for figure in drawn:
            if figure.png:
                (folder / f"{figure.name}.png").write_bytes(figure.png)
        atomic_write(target, build_html(run, drawn, totals).encode("utf-8"), sync=False)
    except OSError as exc:
        where = exc.filename or folder
        raise StudyError(f"{where}: cannot write the report: {exc.strerror or exc}") from None
    return target
