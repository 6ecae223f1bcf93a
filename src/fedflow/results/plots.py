"""The plots of a run report, drawn with matplotlib from a run directory.

Figures are ``matplotlib.figure.Figure`` objects rendered straight to PNG (Agg): no pyplot, no
display, no global state, so a notebook's own matplotlib backend is left alone.

Each ``*_figure`` function takes what a run wrote and returns a ``Figure``: a PNG and a caption, or,
when the run does not hold what the plot needs, no PNG and a sentence saying what is there
instead; None when the plot does not apply to the run at all. ``figures(run)`` returns every
figure that applies, in the order of the report. Nothing here runs an analysis: every number
drawn is one the run directory holds.

Needs matplotlib (``pip install 'fedflow-studies[report]'``); import this module only after
``html_report.require_matplotlib()``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure as MplFigure

from fedflow.results.report import comparison_line
from fedflow.results.saved import SavedRun

__all__ = [
    "MAX_COEFFICIENTS",
    "OBJECTIVES",
    "SCORE_POINTS",
    "Figure",
    "coefficient_figure",
    "convergence_figure",
    "figures",
    "kaplan_meier_figure",
    "pca_figures",
    "rounds_figure",
    "sites_figure",
]

OBJECTIVES = ("loglik", "deviance", "inertia", "loss", "sse", "rss")
"""Scalar reply fields that are per-site parts of an app's objective: their sum over the sites
in one round is the objective at that round's parameters (plotted from ``trace.jsonl``)."""

MAX_COEFFICIENTS = 60
"""At most this many coefficients are drawn (the first ones; every value is in result.json)."""

SCORE_POINTS = 5000
"""At most this many PCA scores per site are drawn (the first rows of its projections.csv)."""

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Figure:
    """One plot of the report: ``name`` (its file is ``report/<name>.png``), a title, a caption,
    and the PNG (None: the run lacks what the plot needs; the caption says what is there)."""

    name: str
    title: str
    caption: str
    png: bytes | None = None


def _subplots(figsize: tuple[float, float], *args: Any, **kwargs: Any) -> tuple[MplFigure, Any]:
    """Return a new figure of ``figsize`` inches and its axes (``Figure.subplots`` arguments)."""
    fig = MplFigure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _map(value: Any) -> Mapping[str, Any]:
    """Return ``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _num(value: Any) -> float:
    """Return ``value`` as a float (None, as JSON writes NaN, becomes NaN)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# -- Kaplan–Meier ---------------------------------------------------------------------------------
def kaplan_meier_figure(run: SavedRun) -> Figure | None:
    """Survival curves (steps) with their confidence bands, one per group."""
    timeline = run.result.get("timeline")
    if run.app != "kaplan-meier" or not isinstance(timeline, Mapping) or not timeline:
        return None
    grouped = all(isinstance(v, Mapping) for v in timeline.values())
    curves = timeline if grouped else {"all": timeline}
    group_by = run.manifest.get("params", {}).get("group") if grouped else None
    alpha = _num(run.manifest.get("params", {}).get("alpha"))
    level = f"{100 * (1 - alpha):g}%" if math.isfinite(alpha) else "confidence"
    fig, ax = _subplots((7.5, 4.2))
    for i, (group, curve) in enumerate(curves.items()):
        times = [_num(t) for t in curve["time"]]
        color = f"C{i % 10}"
        label = f"{group_by} = {group}" if group_by else str(group)
        ax.step(times, [_num(s) for s in curve["survival"]], where="post", color=color, label=label)
        ax.fill_between(
            times,
            [_num(v) for v in curve["ci_lower"]],
            [_num(v) for v in curve["ci_upper"]],
            step="post",
            color=color,
            alpha=0.2,
            linewidth=0,
        )
    duration = run.manifest.get("params", {}).get("duration") or "time"
    ax.set_xlabel(str(duration))
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(f"Kaplan–Meier estimate with {level} bands")
    fig.tight_layout()
    caption = (
        f"Kaplan–Meier survival per {'group' if grouped else 'run'} "
        f"({len(curves)} curve{'s' if len(curves) != 1 else ''}), shaded: the {level} "
        "confidence band; every point is in result.json (timeline)."
    )
    return Figure("kaplan-meier", "Survival curves", caption, _png(fig))


# -- coefficients ---------------------------------------------------------------------------------
def _pooled(comparison: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the centralized value of every compared path listed in ``comparison.json``."""
    if not comparison:
        return {}
    return {
        str(item["path"]): item.get("centralized")
        for item in comparison.get("items") or []
        if isinstance(item, Mapping) and "path" in item
    }


def _interval(
    values: Mapping[str, Any], name: str, estimate: float, prefix: str = ""
) -> tuple[float, float]:
    """Return the (low, high) 95% interval of coefficient ``name``: ``ci_lower``/``ci_upper`` if
    the result has them, else estimate ± 1.96 standard errors, else (nan, nan)."""
    low = _num(values.get(f"{prefix}ci_lower.{name}"))
    high = _num(values.get(f"{prefix}ci_upper.{name}"))
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    se = _num(values.get(f"{prefix}std_errors.{name}"))
    if math.isfinite(se):
        return estimate - _Z95 * se, estimate + _Z95 * se
    return math.nan, math.nan


def _flat_result(result: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("coefficients", "std_errors", "ci_lower", "ci_upper"):
        block = result.get(key)
        if isinstance(block, Mapping):
            out.update({f"{key}.{name}": value for name, value in block.items()})
    return out


def coefficient_figure(run: SavedRun) -> Figure | None:
    """Each coefficient with its 95% interval; with ``--compare`` the pooled fit beside it."""
    coefficients = run.result.get("coefficients")
    if not isinstance(coefficients, Mapping) or not coefficients:
        return None
    if not all(isinstance(v, (int, float)) or v is None for v in coefficients.values()):
        return None  # not one number per name (e.g. one table per class)
    names = [str(n) for n in coefficients][:MAX_COEFFICIENTS]
    ours = _flat_result(run.result)
    pooled = _pooled(run.comparison)
    fig, ax = _subplots((7.5, 1.2 + 0.42 * len(names)))
    ys = list(range(len(names)))[::-1]
    has_pooled = False
    for y, name in zip(ys, names, strict=True):
        estimate = _num(coefficients[name])
        low, high = _interval(ours, name, estimate)
        offset = 0.15 if run.comparison else 0.0
        ax.plot([low, high], [y + offset] * 2, color="C0", linewidth=2)
        ax.plot(
            [estimate], [y + offset], "o", color="C0", label="federated" if y == ys[0] else None
        )
        ref = _num(pooled.get(f"coefficients.{name}"))
        if math.isfinite(ref):
            ref_low, ref_high = _interval(pooled, name, ref)
            ax.plot([ref_low, ref_high], [y - offset] * 2, color="C1", linewidth=2)
            ax.plot(
                [ref],
                [y - offset],
                "s",
                color="C1",
                markerfacecolor="white",
                label=None if has_pooled else "pooled",
            )
            has_pooled = True
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, names)
    ax.set_xlabel("coefficient (95% interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(
        "coefficients: federated vs pooled" if has_pooled else "coefficients (federated fit)"
    )
    fig.tight_layout()
    shown = (
        f" The first {len(names)} of {len(coefficients)} coefficients are drawn."
        if len(coefficients) > len(names)
        else ""
    )
    if run.comparison and has_pooled:
        caption = (
            "Circles: the federated estimates; squares: the same model fitted on the pooled "
            f"rows. {comparison_line(run.comparison)}."
        )
    elif run.comparison:
        caption = (
            "The federated estimates; comparison.json lists no pooled coefficients to draw "
            f"beside them. {comparison_line(run.comparison)}."
        )
    else:
        caption = (
            "The federated estimates with their 95% intervals (run with --compare to draw the "
            "pooled fit beside them)."
        )
    return Figure("coefficients", "Coefficients", caption + shown, _png(fig))


# -- PCA ------------------------------------------------------------------------------------------
def _read_scores(path: Path, limit: int) -> tuple[list[str], list[list[float]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows: list[list[float]] = []
        for row in reader:
            if len(rows) >= limit:
                break
            rows.append([_num(v) for v in row])
    return header, rows


def pca_figures(run: SavedRun) -> list[Figure]:
    """The explained variance per component, and the scores (PC1 vs PC2, one colour per site)
    when the sites' projections.csv are in the run; else the loadings, saying why."""
    result = run.result
    if run.app != "pca" or "components" not in result:
        return []
    out: list[Figure] = []
    variance = [_num(v) for v in result.get("explained_variance") or []]
    ratios = [_num(v) for v in result.get("explained_variance_ratio") or []]
    if variance:
        labels = [f"PC{i + 1}" for i in range(len(variance))]
        fig, ax = _subplots((7.5, 3.8))
        if ratios:
            ax.bar(labels, ratios, color="C0", label="explained variance ratio")
            cumulative, total = [], 0.0
            for r in ratios:
                total += r
                cumulative.append(total)
            ax.plot(labels, cumulative, "o-", color="C3", label="cumulative")
            ax.set_ylabel("share of total variance")
            ax.set_ylim(0, 1.05)
            ax.legend(loc="center right")
        else:
            ax.bar(labels, variance, color="C0")
            ax.set_ylabel("explained variance")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title("explained variance per component")
        fig.tight_layout()
        share = f"; the {len(ratios)} components explain {sum(ratios):.1%}" if ratios else ""
        out.append(
            Figure(
                "pca-variance",
                "Explained variance",
                f"Variance explained by each principal component{share}.",
                _png(fig),
            )
        )
    files = sorted(run.path.glob("sites/*/projections.csv"))
    if files:
        fig, ax = _subplots((6.5, 5.2))
        drawn = 0
        header: list[str] = []
        for i, path in enumerate(files):
            header, rows = _read_scores(path, SCORE_POINTS)
            if not rows:
                continue
            xs = [r[0] for r in rows]
            ys = [r[1] if len(r) > 1 else 0.0 for r in rows]
            ax.scatter(xs, ys, s=12, alpha=0.7, color=f"C{i % 10}", label=path.parent.name)
            drawn += len(rows)
        ax.set_xlabel(header[0] if header else "PC1")
        ax.set_ylabel(header[1] if len(header) > 1 else "(one component)")
        ax.grid(alpha=0.3)
        ax.legend(title="site")
        ax.set_title("scores on the first two components")
        fig.tight_layout()
        caption = (
            f"The scores of {drawn} rows ({len(files)} sites' projections.csv, at most "
            f"{SCORE_POINTS} per site), each site in its own colour."
        )
        out.append(Figure("pca-scores", "Scores", caption, _png(fig)))
        return out
    components = result.get("components") or []
    columns = [str(c) for c in result.get("columns") or []]
    wanted = run.manifest.get("params", {}).get("projections")
    why = (
        "the sites wrote projections.csv, but none is under sites/ (a remote site's files are "
        "fetched at the end of a completed run)"
        if wanted
        else "the study did not set projections = true, so the scores stayed unwritten at the "
        "sites (set it to have each site write its own projections.csv)"
    )
    if len(components) >= 2 and columns:
        fig, ax = _subplots((6.5, 5.2))
        for j, column in enumerate(columns):
            x, y = _num(components[0][j]), _num(components[1][j])
            ax.annotate(
                "", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "C0"}
            )
            ax.text(x * 1.08, y * 1.08, column, fontsize=9, ha="center", va="center")
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("PC1 loading")
        ax.set_ylabel("PC2 loading")
        ax.set_title("loadings of PC1 and PC2")
        ax.set_aspect("equal")
        fig.tight_layout()
        out.append(
            Figure(
                "pca-loadings",
                "Loadings (no scores in this run)",
                f"This run holds no scores: {why}. Shown instead: each column's loading on "
                "the first two components.",
                _png(fig),
            )
        )
    else:
        out.append(Figure("pca-scores", "Scores", f"This run holds no scores: {why}."))
    return out


# -- convergence ----------------------------------------------------------------------------------
def _training_history(run: SavedRun) -> Figure | None:
    history = run.result.get("history")
    if not isinstance(history, list) or not history:
        return None
    metric = str(run.result.get("metric") or "")
    rounds, global_loss, train_loss, global_metric = [], [], [], []
    for entry in history:
        if not isinstance(entry, Mapping):
            continue
        rounds.append(_num(entry.get("round")))
        evaluated = _map(entry.get("global"))
        global_loss.append(_num(evaluated.get("loss")))
        global_metric.append(_num(evaluated.get(metric)) if metric else math.nan)
        train_loss.append(_num(entry.get("train_loss")))
    panels = 2 if any(math.isfinite(v) for v in global_metric) else 1
    fig, axes = _subplots((9 if panels == 2 else 6, 3.8), 1, panels, squeeze=False)
    ax = axes[0][0]
    ax.plot(rounds, global_loss, "o-", color="C0", label="validation loss (global model)")
    if any(math.isfinite(v) for v in train_loss):
        ax.plot(rounds, train_loss, "s--", color="C1", label="training loss (sites, mean)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if panels == 2:
        ax2 = axes[0][1]
        ax2.plot(rounds, global_metric, "o-", color="C2")
        best = run.result.get("best_round")
        if isinstance(best, int):
            ax2.axvline(best, color="grey", linestyle=":", label=f"best round ({best})")
            ax2.legend()
        ax2.set_xlabel("round")
        ax2.set_ylabel(f"validation {metric}")
        ax2.grid(alpha=0.3)
    fig.suptitle("training per round")
    fig.tight_layout()
    caption = (
        f"The global model after each of {len(rounds) - 1} rounds (round 0: before training), "
        "evaluated on the sites' held-out rows; from result.json (history)."
    )
    return Figure("convergence", "Convergence per round", caption, _png(fig))


def _trace_objectives(path: Path) -> dict[tuple[str, str], dict[int, list[float]]]:
    """Return {(phase, field): {round: [each site's part]}} of the OBJECTIVES fields."""
    found: dict[tuple[str, str], dict[int, list[float]]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if '"reply"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("type") != "reply" or not isinstance(entry.get("round"), int):
                continue
            message = entry.get("message")
            payload = message.get("payload") if isinstance(message, Mapping) else None
            if not isinstance(payload, Mapping):
                continue
            for key in OBJECTIVES:
                value = payload.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    parts = found.setdefault((str(entry.get("phase")), key), {})
                    parts.setdefault(entry["round"], []).append(float(value))
    return found


def convergence_figure(run: SavedRun) -> Figure | None:
    """The objective per round: a training run's history, else the sum over the sites of an
    objective field of their replies in ``trace.jsonl``; a sentence when neither is there."""
    if run.result.get("history") is not None:
        return _training_history(run)
    rounds = run.metrics.get("rounds") or []
    if len(rounds) < 2:
        return None
    n_sites = len(run.manifest.get("sites") or {})
    if not run.has_trace:
        return Figure(
            "convergence",
            "Convergence per round",
            f"{len(rounds)} rounds ran; the app's objective per round is not in this run "
            "directory. `fedflow run --trace` records every site's reply, from which the report "
            "draws it (time and bytes per round are below).",
        )
    if run.manifest.get("secure"):
        return Figure(
            "convergence",
            "Convergence per round",
            "This run used secure aggregation: the traced replies are masked, so no objective "
            "per round can be read from them (time and bytes per round are below).",
        )
    series = {
        key: {r: sum(parts) for r, parts in per_round.items() if len(parts) == n_sites}
        for key, per_round in _trace_objectives(run.path / "trace.jsonl").items()
    }
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return Figure(
            "convergence",
            "Convergence per round",
            f"{len(rounds)} rounds ran; the traced replies hold none of the objective fields "
            f"the report knows ({', '.join(OBJECTIVES)}), so there is no curve to draw.",
        )
    fig, axes = _subplots((6 * len(series), 3.8), 1, len(series), squeeze=False)
    for ax, ((phase, key), points) in zip(axes[0], series.items(), strict=True):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], "o-", color="C0")
        ax.set_xlabel("round")
        ax.set_ylabel(f"{key} (sum over {n_sites} sites)")
        ax.set_title(f"{key} in phase {phase}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    names = ", ".join(f"{key} (phase {phase})" for phase, key in series)
    caption = (
        f"{names}: the sum of every site's part in each round, read from trace.jsonl — the "
        "objective at the parameters the coordinator sent in that round."
    )
    return Figure("convergence", "Convergence per round", caption, _png(fig))


# -- time and bytes -------------------------------------------------------------------------------
def rounds_figure(run: SavedRun) -> Figure | None:
    """Time (exchange, aggregate) and bytes (both directions, all sites) of every round."""
    rounds = [r for r in run.metrics.get("rounds") or [] if isinstance(r, Mapping)]
    if len(rounds) < 2:
        return None
    xs = list(range(1, len(rounds) + 1))
    exchange = [1000 * _num(r.get("exchange_seconds")) for r in rounds]
    aggregate = [1000 * _num(r.get("aggregate_seconds")) for r in rounds]
    sent, received = [], []
    for r in rounds:
        sites = _map(r.get("sites"))
        sent.append(sum(_num(_map(s).get("bytes_to_site")) for s in sites.values()) / 1024)
        received.append(sum(_num(_map(s).get("bytes_from_site")) for s in sites.values()) / 1024)
    fig, (ax1, ax2) = _subplots((10, 3.6), 1, 2)
    ax1.bar(xs, exchange, color="C0", label="exchange (sites computing, bytes travelling)")
    ax1.bar(xs, aggregate, bottom=exchange, color="C1", label="aggregate (coordinator)")
    ax1.set_xlabel("round")
    ax1.set_ylabel("ms")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    ax2.plot(xs, sent, "o-", color="C2", label="to the sites")
    ax2.plot(xs, received, "s-", color="C3", label="from the sites")
    ax2.set_xlabel("round")
    ax2.set_ylabel("KiB (all sites)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("time and bytes per round")
    fig.tight_layout()
    caption = (
        f"Each of the {len(rounds)} rounds: its duration and the bytes it moved (metrics.json)."
    )
    return Figure("rounds", "Time and bytes per round", caption, _png(fig))


def site_totals(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Return per site: compute seconds in the rounds, CPU seconds, bytes each way, peak RSS."""
    sites = metrics.get("sites") if isinstance(metrics.get("sites"), Mapping) else {}
    out: dict[str, dict[str, float]] = {}
    for name, values in (sites or {}).items():
        values = values if isinstance(values, Mapping) else {}
        out[str(name)] = {
            "compute_seconds": 0.0,
            "cpu_seconds": _num(values.get("cpu_seconds")),
            "bytes_to_site": _num(values.get("bytes_to_site")),
            "bytes_from_site": _num(values.get("bytes_from_site")),
            "peak_rss_bytes": _num(values.get("peak_rss_bytes")),
        }
    for r in metrics.get("rounds") or []:
        per_site = r.get("sites") if isinstance(r, Mapping) else None
        for name, values in (per_site or {}).items():
            entry = out.setdefault(
                str(name),
                dict.fromkeys(
                    ("cpu_seconds", "bytes_to_site", "bytes_from_site", "peak_rss_bytes"),
                    math.nan,
                )
                | {"compute_seconds": 0.0},
            )
            entry["compute_seconds"] += _num(values.get("compute_seconds"))
    return out


def sites_figure(run: SavedRun) -> Figure | None:
    """Per site: time (compute in the rounds, CPU of its process) and bytes each way."""
    totals = site_totals(run.metrics)
    if not totals:
        return None
    names = list(totals)
    xs = list(range(len(names)))
    width = 0.38
    fig, (ax1, ax2) = _subplots((10, 3.8), 1, 2)

    def bars(ax: Any, keys: Sequence[tuple[str, str]], scale: float) -> None:
        for k, (key, label) in enumerate(keys):
            ax.bar(
                [x + (k - 0.5) * width for x in xs],
                [totals[n][key] * scale for n in names],
                width,
                color=f"C{k + (0 if scale == 1.0 else 2)}",
                label=label,
            )
        ax.set_xticks(xs, names, rotation=30 if len(names) > 4 else 0)
        ax.margins(y=0.25)  # room for the legend above the bars
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")

    bars(ax1, [("compute_seconds", "computing in rounds"), ("cpu_seconds", "CPU (process)")], 1.0)
    ax1.set_ylabel("seconds")
    bars(ax2, [("bytes_to_site", "to the site"), ("bytes_from_site", "from the site")], 1 / 1024)
    ax2.set_ylabel("KiB")
    fig.suptitle("time and bytes per site")
    fig.tight_layout()
    caption = (
        "Per site: the seconds it spent computing its replies (summed over the rounds) and its "
        "process's CPU time; the bytes sent to it and received from it over the whole run."
    )
    return Figure("sites", "Time and bytes per site", caption, _png(fig))


def figures(run: SavedRun) -> list[Figure]:
    """Return every figure that applies to ``run``, in report order."""
    out: list[Figure] = []
    for make in (kaplan_meier_figure, coefficient_figure):
        figure = make(run)
        if figure is not None:
            out.append(figure)
    out.extend(pca_figures(run))
    for make in (convergence_figure, rounds_figure, sites_figure):
        figure = make(run)
        if figure is not None:
            out.append(figure)
    return out
