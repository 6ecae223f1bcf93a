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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from fedflow.results.run import Run

__all__ = ["fmt", "render_html", "render_text", "result_renderable", "result_tables"]

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


def result_tables(result: Mapping[str, Any], title: str = "") -> list[Table]:
    """Return the tables showing ``result`` (see the module docstring for the layout rules)."""
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


def result_renderable(run: Run) -> Group:
    """Return the renderable summary of a run: result tables, notes, comparison, location."""
    parts: list[Any] = [Text(f"{run.app or 'run'} — {run.status}", style="bold")]
    parts.extend(result_tables(run.result))
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
