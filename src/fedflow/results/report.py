"""Readable results: rich tables for the terminal, text and HTML for notebooks.

Rendering is generic over result dicts, so apps stay free of presentation code:
- maps keyed by the same names (``coefficients``, ``std_errors``, ``p_values`` …) become one table
  with a column each;
- a map of maps of numbers (``stats`` per column) becomes a table;
- remaining numbers and flags are listed as fit statistics; longer structures are summarised.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from fedflow.runtime.run import Run

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


def result_tables(result: Mapping[str, Any], title: str = "") -> list[Table]:
    """Return the tables showing ``result``."""
    tables: list[Table] = []
    used: set[str] = set()
    # 1. parallel maps keyed by the same names (coefficient tables)
    named = {
        k: v
        for k, v in result.items()
        if isinstance(v, Mapping)
        and v
        and all(_is_scalar(x) and not isinstance(x, str) for x in v.values())
    }
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, value in named.items():
        groups.setdefault(tuple(value), []).append(key)
    for names, keys in groups.items():
        if len(keys) < 2 and keys[0] not in _SHORT:
            continue
        table = Table(title=title or None, title_justify="left", box=None, pad_edge=False)
        table.add_column("")
        for key in keys:
            table.add_column(_SHORT.get(key, key), justify="right")
        for name in names:
            table.add_row(name, *(fmt(result[k][name]) for k in keys))
        tables.append(table)
        used.update(keys)
    # 2. maps of maps of scalars (one row per outer key)
    nested = {
        k: v
        for k, v in result.items()
        if k not in used
        and isinstance(v, Mapping)
        and v
        and all(isinstance(x, Mapping) for x in v.values())
    }
    for key, value in nested.items():
        inner = [
            c
            for c in next(iter(value.values()))
            if all(_is_scalar(r.get(c)) for r in value.values())
        ]
        if not inner:
            continue
        table = Table(
            title=key if len(nested) > 1 or len(result) > 1 else None,
            title_justify="left",
            box=None,
        )
        table.add_column("")
        for col in inner:
            table.add_column(col, justify="right")
        for row, values in value.items():
            table.add_row(str(row), *(fmt(values.get(c)) for c in inner))
        tables.append(table)
        used.add(key)
    if all(isinstance(v, Mapping) for v in result.values()) and not used:
        # a result that is itself a map of maps (stats: column -> statistics)
        inner = [
            c
            for c in next(iter(result.values()), {})
            if all(_is_scalar(r.get(c)) for r in result.values())
        ]
        if inner:
            table = Table(box=None)
            table.add_column("")
            for col in inner:
                table.add_column(col, justify="right")
            for row, values in result.items():
                table.add_row(str(row), *(fmt(values.get(c)) for c in inner))
            tables.append(table)
            used.update(result)
    # 3. everything else: key / value
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
    return (
        f"compare: MISMATCH with {reference} on pooled data: {comparison['mismatched']} of "
        f"{comparison['compared']} values differ beyond rtol {comparison['rtol']:g}"
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
