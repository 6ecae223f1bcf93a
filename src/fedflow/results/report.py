"""Readable results: rich tables for the terminal, text and HTML for notebooks.

Rendering is generic over result dicts, so apps stay free of presentation code:
1. maps keyed by the same names (``coefficients``, ``std_errors``, ``p_values`` …) become one table
   with a column each and a row per name;
2. a map of records (a correlation matrix, a contingency table, per-group statistics) becomes a
   table titled by its key;
3. a list of records (a survival timeline) becomes a table of its first rows;
4. the remaining records (``stats`` per column) become one table with a row each;
5. numbers, flags and anything longer are listed last, long values shortened.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from fedflow.results.run import Run

__all__ = [
    "APP_RENDERERS",
    "fmt",
    "generic_tables",
    "render_html",
    "render_text",
    "result_renderable",
    "result_tables",
]

_SHORT = {
    "coefficients": "coef",
    "std_errors": "std.err",
    "t_values": "t",
    "z_values": "z",
    "p_values": "p",
    "hazard_ratios": "hazard ratio",
    "ci_lower": "ci low",
    "ci_upper": "ci high",
}


def fmt(value: Any) -> str:
    """Return a compact, readable form of a number (6 significant digits) or other value."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "…"
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _flat(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return a record with one nested level flattened (``quantiles.0.5``), or None if deeper."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if _is_scalar(value):
            out[str(key)] = value
        elif isinstance(value, Mapping) and all(_is_scalar(v) for v in value.values()):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            return None
    return out


def _table(
    title: str | None, rows: Sequence[tuple[str, Mapping[str, Any]]], limit: int = 0
) -> Table:
    columns: list[str] = []
    for _, values in rows:
        columns.extend(c for c in values if c not in columns)
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("")
    for column in columns:
        table.add_column(_SHORT.get(column, column), justify="right")
    shown = rows if not limit or len(rows) <= limit else rows[:limit]
    for name, values in shown:
        table.add_row(name, *(fmt(values.get(c)) if c in values else "" for c in columns))
    if len(shown) < len(rows):
        table.add_row(f"… {len(rows) - len(shown)} more rows", *([""] * len(columns)))
    return table


def result_tables(
    result: Mapping[str, Any], title: str = "", *, app: str | None = None
) -> list[Table]:
    """Return the tables showing ``result``: the app's own layout when ``app`` has one (see
    ``APP_RENDERERS``), else the generic rules of the module docstring."""
    renderer = APP_RENDERERS.get(app or "")
    if renderer is None and result.get("platform") == "featurecloud":
        renderer = _featurecloud
    if renderer is not None:
        try:
            return renderer(result)
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # a result of another shape (a plug-in of the same name, an older run)
    return generic_tables(result, title)


def generic_tables(result: Mapping[str, Any], title: str = "") -> list[Table]:
    """Return the tables showing any result dict (see the module docstring for the rules)."""
    tables: list[Table] = []
    used: set[str] = set()
    numbers = {
        k: v
        for k, v in result.items()
        if isinstance(v, Mapping)
        and v
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())
    }
    # 1. coefficient tables: maps named like coefficients, keyed by the same names
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, value in numbers.items():
        if key in _SHORT or key.endswith(("_values", "_errors", "_ratios")):
            groups.setdefault(tuple(value), []).append(key)
    for names, keys in groups.items():
        tables.append(_table(title or None, [(n, {k: result[k][n] for k in keys}) for n in names]))
        used.update(keys)
    # 2. maps of records (a correlation matrix, a contingency table, groups): one table each
    for key, value in result.items():
        if key in used or not isinstance(value, Mapping) or not value:
            continue
        if all(isinstance(v, Mapping) for v in value.values()):
            records = [(str(k), _flat(v)) for k, v in value.items()]
            if all(f is not None for _, f in records):
                tables.append(_table(key, [(k, f) for k, f in records if f is not None]))
                used.add(key)
    # 3. lists of records (a survival timeline): the first rows of a table
    for key, value in result.items():
        if (
            key in used
            or not isinstance(value, list)
            or not value
            or not all(isinstance(v, Mapping) for v in value)
        ):
            continue
        flat = [_flat(v) for v in value]
        if all(f is not None for f in flat):
            tables.append(
                _table(
                    key, [(str(i + 1), f) for i, f in enumerate(flat) if f is not None], limit=12
                )
            )
            used.add(key)
    # 4. the remaining records (per-column statistics), one row each
    records = [
        (k, _flat(v)) for k, v in result.items() if k not in used and isinstance(v, Mapping) and v
    ]
    rows = [(str(k), f) for k, f in records if f is not None]
    if rows:
        tables.append(_table(None, rows))
        used.update(k for k, f in records if f is not None)
    # 5. everything else: key / value
    rest = [(k, v) for k, v in result.items() if k not in used]
    if rest:
        table = Table(box=None, show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for key, value in rest:
            table.add_row(key, fmt(value))
        tables.append(table)
    return tables


# -- per-app layouts ------------------------------------------------------------------------------
def _scalars(result: Mapping[str, Any], keys: Sequence[str], title: str | None = None) -> Table:
    """Return a key / value table of the ``keys`` present in ``result``."""
    table = Table(
        title=title,
        title_justify="left",
        box=None,
        show_header=False,
        pad_edge=False,
        min_width=len(title or ""),
    )
    table.add_column("", style="bold")
    table.add_column("")
    for key in keys:
        if key in result:
            table.add_row(key, fmt(result[key]))
    return table


def _grid(
    title: str | None,
    corner: str,
    columns: Sequence[str],
    rows: Sequence[tuple[str, Sequence[Any]]],
) -> Table:
    """Return a table with a header row ``columns`` and one row of values per named row."""
    table = Table(
        title=title, title_justify="left", box=None, pad_edge=False, min_width=len(title or "")
    )
    table.add_column(corner)
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in rows:
        table.add_row(name, *(v if isinstance(v, str) else fmt(v) for v in values))
    return table


def _bar(share: float, width: int = 20) -> str:
    """Return a horizontal bar of ``share`` (0..1) of ``width`` characters."""
    share = min(max(share, 0.0), 1.0)
    return "█" * round(share * width)


def _pick(points: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """Return at most ``limit`` points of a survival timeline: the first, the last and event times
    spread evenly in between."""
    events = [p for p in points[1:-1] if p.get("events")]
    if len(points) <= limit:
        return list(points)
    inner = limit - 2
    step = max(len(events) / inner, 1.0) if events else 1.0
    chosen = [events[int(i * step)] for i in range(min(inner, len(events)))]
    return [points[0], *chosen, points[-1]]


def _survival_rows(table: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Return a survival table stored one list per column as one dict per row."""
    return [dict(zip(table, row, strict=True)) for row in zip(*table.values(), strict=True)]


def _kaplan_meier(result: Mapping[str, Any]) -> list[Table]:
    timeline = result["timeline"]
    grouped = all(isinstance(v, Mapping) for v in timeline.values())
    tables_by_group = timeline if grouped else {"all": timeline}
    curves = {group: _survival_rows(table) for group, table in tables_by_group.items()}
    medians = result["median_survival"]
    medians = medians if isinstance(medians, Mapping) else {"all": medians}
    tables = []
    rows = []
    for group, points in curves.items():
        at_start = points[0]["at_risk"] if points else 0
        events = sum(int(p["events"]) for p in points)
        median = medians.get(group)
        rows.append((str(group), [at_start, events, "not reached" if median is None else median]))
    tables.append(_grid("survival by group", "group", ["n", "events", "median survival"], rows))
    logrank = result.get("logrank")
    if isinstance(logrank, Mapping):
        tables.append(
            _grid(
                "log-rank test (all groups)",
                "",
                ["chi2", "dof", "p"],
                [("", [logrank["statistic"], logrank["dof"], logrank["p_value"]])],
            )
        )
    for group, points in curves.items():
        shown = _pick(points, 10)
        label = f"timeline, group {group}" if len(curves) > 1 else "timeline"
        title = f"{label}: {len(shown)} of {len(points)} times (all in result.json)"
        tables.append(
            _grid(
                title,
                "time",
                ["at risk", "events", "survival", "ci low", "ci high"],
                [
                    (
                        fmt(p["time"]),
                        [p["at_risk"], p["events"], p["survival"], p["ci_lower"], p["ci_upper"]],
                    )
                    for p in shown
                ],
            )
        )
    tables.append(_scalars(result, ["n_obs", "n_events"]))
    return tables


def _kmeans(result: Mapping[str, Any]) -> list[Table]:
    columns = [str(c) for c in result["columns"]]
    sizes = result.get("cluster_sizes") or [""] * len(result["centers"])
    rows = [
        (str(i + 1), [*center, size])
        for i, (center, size) in enumerate(zip(result["centers"], sizes, strict=True))
    ]
    return [
        _grid("cluster centres", "cluster", [*columns, "size"], rows),
        _scalars(result, ["inertia", "iterations", "converged", "withheld"]),
    ]


def _pca(result: Mapping[str, Any]) -> list[Table]:
    columns = [str(c) for c in result["columns"]]
    components = result["components"]
    names = [f"PC{i + 1}" for i in range(len(components))]
    extra = [k for k in ("mean", "scale") if isinstance(result.get(k), list)]
    loadings = [
        (column, [*(pc[j] for pc in components), *(result[k][j] for k in extra)])
        for j, column in enumerate(columns)
    ]
    ratios = result.get("explained_variance_ratio") or []
    cumulative = 0.0
    variance_rows = []
    for i, name in enumerate(names):
        ratio = ratios[i] if i < len(ratios) else None
        cumulative += ratio or 0.0
        variance_rows.append(
            (
                name,
                [
                    result["explained_variance"][i],
                    ratio,
                    cumulative if ratio is not None else None,
                    _bar(ratio or 0.0),
                ],
            )
        )
    return [
        _grid("explained variance", "", ["variance", "ratio", "cumulative", ""], variance_rows),
        _grid("loadings (components by column)", "column", [*names, *extra], loadings),
        _scalars(result, ["n_obs"]),
    ]


_STAT_ORDER = ("count", "mean", "variance", "std", "sem", "sum", "min", "max")


def _stats(result: Mapping[str, Any]) -> list[Table]:
    per_column = {
        k: v
        for k, v in result.items()
        if isinstance(v, Mapping) and k not in ("covariance", "correlation")
    }
    tables: list[Table] = []
    stats = [s for s in _STAT_ORDER if any(s in v for v in per_column.values())]
    probs: list[str] = []
    for values in per_column.values():
        probs.extend(q for q in values.get("quantiles") or {} if q not in probs)
    header = [*stats, *(f"q{q}" for q in probs)]
    rows = [
        (
            str(name),
            [
                *(values.get(s, "") for s in stats),
                *((values.get("quantiles") or {}).get(q, "") for q in probs),
            ],
        )
        for name, values in per_column.items()
    ]
    if header:
        tables.append(_grid(None, "column", header, rows))
    for name, values in per_column.items():
        histogram = values.get("histogram")
        if not isinstance(histogram, Mapping):
            continue
        edges, counts = histogram["edges"], histogram["counts"]
        top = max(counts) if counts else 0
        last = len(counts) - 1
        bins = [
            (
                f"[{fmt(edges[i])}, {fmt(edges[i + 1])}{']' if i == last else ')'}",
                [count, _bar(count / top if top else 0.0, 30)],
            )
            for i, count in enumerate(counts)
        ]
        table = _grid(f"histogram of {name}", "bin", ["count", ""], bins)
        table.columns[2].justify = "left"
        tables.append(table)
    for key in ("covariance", "correlation"):
        matrix = result.get(key)
        if isinstance(matrix, Mapping):
            tables.append(_table(key, [(str(k), v) for k, v in matrix.items()]))
    return tables


def _random_forest(result: Mapping[str, Any]) -> list[Table]:
    tables: list[Table] = []
    importances = result.get("feature_importances")
    if isinstance(importances, Mapping) and importances:
        ordered = sorted(importances.items(), key=lambda kv: -float(kv[1]))
        top = float(ordered[0][1]) or 1.0
        table = _grid(
            "feature importances (mean decrease in impurity)",
            "feature",
            ["importance", ""],
            [(str(k), [v, _bar(float(v) / top)]) for k, v in ordered],
        )
        table.columns[2].justify = "left"
        tables.append(table)
    quality = [
        k
        for k in (
            "accuracy",
            "auc",
            "oob_accuracy",
            "oob_auc",
            "r_squared",
            "oob_r_squared",
            "mse",
            "oob_mse",
        )
        if k in result
    ]
    tables.append(_scalars(result, quality, title="fit (oob: on out-of-bag rows)"))
    per_site = result.get("trees_per_site")
    if isinstance(per_site, Mapping):
        tables.append(
            _grid("trees per site", "site", ["trees"], [(str(k), [v]) for k, v in per_site.items()])
        )
    shown = {"feature_importances", "trees_per_site", "features", *quality}
    tables.append(_scalars(result, [k for k in result if k not in shown]))
    return tables


def _featurecloud(result: Mapping[str, Any]) -> list[Table]:
    """A FeatureCloud run: the app's own result first, then one line of the platform's status
    (the full bookkeeping is in featurecloud.json)."""
    tables: list[Table] = []
    outcome = result.get("result")
    if isinstance(outcome, Mapping) and outcome:
        heading = Table(box=None, show_header=False, pad_edge=False)
        heading.add_column("", style="bold")
        heading.add_row(f"{result.get('tool') or 'app'} result")
        tables.append(heading)
        tables.extend(generic_tables(outcome))
    summary = Table(box=None, show_header=False, pad_edge=False)
    summary.add_column("")
    summary.add_row(
        f"FeatureCloud project {result.get('project_id')}: {result.get('status')} "
        f"(run {result.get('run')}); every site's files and logs are in the run directory, "
        "the platform's bookkeeping in featurecloud.json"
    )
    tables.append(summary)
    return tables


APP_RENDERERS: dict[str, Callable[[Mapping[str, Any]], list[Table]]] = {
    "kaplan-meier": _kaplan_meier,
    "kmeans": _kmeans,
    "pca": _pca,
    "stats": _stats,
    "random-forest": _random_forest,
}
"""Layouts for results that are not one simple table, keyed by app name; every other app (the
regressions, cox, crosstab, t-test) reads well with the generic rules."""


def result_renderable(run: Run) -> Group:
    """Return the renderable summary of a run: result tables, notes, comparison, location."""
    parts: list[Any] = [Text(f"{run.app or 'run'} — {run.status}", style="bold")]
    parts.extend(result_tables(run.result, app=run.app))
    for note in run.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    if run.comparison is not None:
        parts.append(Text(comparison_line(run.comparison)))
    parts.append(Text(str(run.dir), style="dim"))
    return Group(*parts)


def comparison_line(comparison: Mapping[str, Any]) -> str:
    """Return the one-line verdict of a comparison."""
    reference = comparison.get("reference") or "the centralized reference"
    if comparison["status"] == "match":
        return (
            f"compare: matches {reference} on pooled data "
            f"(max rel. diff {comparison['max_rel_diff']:.1e}, {comparison['compared']} values)"
        )
    missing = comparison.get("missing", 0)
    absent = f", {missing} present on one side only" if missing else ""
    return (
        f"compare: MISMATCH with {reference} on pooled data: {comparison['mismatched']} of "
        f"{comparison['compared']} values differ beyond their tolerance{absent}"
    )


def render_text(renderable: Any, width: int = 100) -> str:
    """Return ``renderable`` as plain text."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def render_html(renderable: Any) -> str:
    """Return ``renderable`` as an HTML fragment (for notebooks)."""
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(renderable)
    return console.export_html(
        inline_styles=True, code_format='<pre style="font-family:monospace">{code}</pre>'
    )
