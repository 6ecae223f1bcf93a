"""``fedflow compare RUN_A RUN_B``: what differs between two runs, as plain text.

Four parts, each read from the two run directories (nothing is rerun):

- **study**: the manifest's study facts and every parameter (``params.*``), A and B side by side;
  only keys that differ are listed, the identical ones counted;
- **data**: each site's data fingerprints (files, sha256, bytes, rows, columns, rows used):
  ``identical`` or what differs; a site in one run only is named;
- **result**: every value of ``result.json`` (flattened paths as in ``comparison.json``), A and
  B side by side with the absolute difference ``|B - A|`` and the relative one ``|B - A| / |A|``;
  ``=`` marks identical values, ``≠`` different ones, ``A``/``B`` a value in one run only. Up to
  ``SHOWN`` values are listed, the different ones first (``--all`` lists every value);
- **timings**: total duration, each phase, the rounds, and per site the bytes each way, CPU
  seconds and peak memory, with the ratio B / A.

A failed run is compared as far as it goes (its error is shown, its missing result said).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fedflow.results.compare import flatten
from fedflow.results.saved import SavedRun

__all__ = ["SHOWN", "compare_runs"]

SHOWN = 40
"""Result values listed without ``--all`` (the different ones first)."""

_STUDY_KEYS = (
    "study.name",
    "study.file",
    "study.sha256",
    "app",
    "platform",
    "seed",
    "min_count",
    "dropna",
    "secure",
    "timeout",
    "fedflow",
    "python",
    "host",
    "status",
    "error.message",
    "rounds",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text if len(text) <= 66 else text[:65] + "…"


def _columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Return ``rows`` as left-aligned text columns (the last column unpadded)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    out = []
    for row in rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _lookup(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _params(value: Any, prefix: str = "params") -> dict[str, Any]:
    """Return ``{"params.key": value}``, nested tables flattened; a list stays one value (so
    ``features`` shows as the whole list on each side, not position by position)."""
    if not isinstance(value, Mapping):
        return {} if value is None and prefix == "params" else {prefix: value}
    out: dict[str, Any] = {}
    for key, sub in value.items():
        out.update(_params(sub, f"{prefix}.{key}"))
    return out


def _study_part(a: SavedRun, b: SavedRun) -> list[str]:
    pairs: list[tuple[str, Any, Any]] = [
        (k, _lookup(a.manifest, k), _lookup(b.manifest, k)) for k in _STUDY_KEYS
    ]
    pa, pb = _params(a.manifest.get("params")), _params(b.manifest.get("params"))
    for key in [*pa, *(k for k in pb if k not in pa)]:
        pairs.append((key, pa.get(key, _ABSENT), pb.get(key, _ABSENT)))
    differ = [(k, x, y) for k, x, y in pairs if x != y]
    lines = [f"study: {len(pairs) - len(differ)} keys identical, {len(differ)} differ"]
    rows = [["key", "A", "B"]]
    rows += [[k, _show_absent(x), _show_absent(y)] for k, x, y in differ]
    if differ:
        lines += _columns(rows)
    return lines


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT: Any = _Absent()


class _Unknown:
    """A sha256 a run's manifest does not know (the run ended before the site sent it): equal
    to nothing, not even another unknown one, so that two such runs never look identical."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __str__(self) -> str:
        return "unknown"


def _show_absent(value: Any) -> str:
    return "(absent)" if value is _ABSENT else _show(value)


def _sites(run: SavedRun) -> dict[str, Mapping[str, Any]]:
    sites = run.manifest.get("sites")
    return (
        {str(k): v for k, v in sites.items() if isinstance(v, Mapping)}
        if isinstance(sites, Mapping)
        else {}
    )


def _fingerprint(site: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, f in enumerate(site.get("files") or []):
        if isinstance(f, Mapping):
            label = f.get("name") or f.get("table") or f"file {i + 1}"
            for key in ("sha256", "bytes", "rows"):
                if key in f:
                    out[f"{label} {key}"] = f[key]
            if "sha256" in f and f["sha256"] is None:
                out[f"{label} sha256"] = _Unknown()
    if isinstance(site.get("columns"), Mapping):
        out["columns"] = ", ".join(f"{k}:{v}" for k, v in site["columns"].items())
    for key in ("rows", "rows_used"):
        if key in site:
            out[key] = site[key]
    return out


def _data_part(a: SavedRun, b: SavedRun) -> list[str]:
    sa, sb = _sites(a), _sites(b)
    names = [*sa, *(n for n in sb if n not in sa)]
    lines = ["data:"]
    if not names:
        return ["data: neither manifest lists sites"]
    for name in names:
        if name not in sb:
            lines.append(f"  {name}: only in A")
            continue
        if name not in sa:
            lines.append(f"  {name}: only in B")
            continue
        fa, fb = _fingerprint(sa[name]), _fingerprint(sb[name])
        keys = [*fa, *(k for k in fb if k not in fa)]
        differ = [k for k in keys if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)]
        if not differ:
            files = [f for f in sa[name].get("files") or [] if isinstance(f, Mapping)]
            shown = ", ".join(
                f"{f.get('name') or f.get('table')} {str(f.get('sha256', ''))[:12]}…" for f in files
            )
            lines.append(f"  {name}: identical ({shown or 'no files listed'})")
            continue
        lines.append(f"  {name}: differs")
        lines += _columns(
            [
                [k, _show_absent(fa.get(k, _ABSENT)), _show_absent(fb.get(k, _ABSENT))]
                for k in differ
            ],
            indent="    ",
        )
    return lines


def _result_part(a: SavedRun, b: SavedRun, *, all_values: bool) -> list[str]:
    if a.result_doc is None or b.result_doc is None:
        missing = [x for x, r in (("A", a), ("B", b)) if r.result_doc is None]
        why = "; ".join(
            f"{x} has no result.json ({r.status}{': ' + r.error if r.error else ''})"
            for x, r in (("A", a), ("B", b))
            if r.result_doc is None
        )
        return [f"result: not compared: {why}"] if missing else []
    fa, fb = flatten(a.result), flatten(b.result)
    paths = [*fa, *(p for p in fb if p not in fa)]
    rows: list[tuple[bool, list[str]]] = []
    identical = only = 0
    for path in paths:
        if path not in fb or path not in fa:
            only += 1
            side = "A" if path in fa else "B"
            value = fa.get(path, fb.get(path))
            rows.append(
                (
                    False,
                    [
                        side,
                        path,
                        _show(value) if side == "A" else "",
                        _show(value) if side == "B" else "",
                        "",
                        "",
                    ],
                )
            )
            continue
        x, y = fa[path], fb[path]
        same = type(x) is type(y) and (x == y or _both_nan(x, y))
        identical += same
        abs_diff = rel_diff = ""
        if _is_number(x) and _is_number(y) and not same:
            d = abs(float(y) - float(x))
            abs_diff = _show(d)
            rel_diff = _show(d / abs(float(x))) if float(x) != 0 else "inf"
        elif same and _is_number(x):
            abs_diff = rel_diff = "0"
        rows.append((same, ["=" if same else "≠", path, _show(x), _show(y), abs_diff, rel_diff]))
    differ = len(paths) - identical - only
    lines = [
        f"result: {len(paths)} values: {identical} identical, {differ} differ, "
        f"{only} in one run only"
    ]
    keep = list(range(len(rows)))
    if not all_values and len(rows) > SHOWN:
        first = [i for i, r in enumerate(rows) if not r[0]] + [
            i for i, r in enumerate(rows) if r[0]
        ]
        keep = sorted(first[:SHOWN])
    shown = [rows[i][1] for i in keep]
    lines += _columns([["", "value", "A", "B", "abs diff", "rel diff"], *shown])
    hidden = [rows[i][0] for i in set(range(len(rows))) - set(keep)]
    if hidden:
        what = f"{sum(hidden)} identical" + (
            f" and {len(hidden) - sum(hidden)} different" if not all(hidden) else ""
        )
        lines.append(f"  … {what} values not shown (--all lists them)")
    return lines


def _both_nan(x: Any, y: Any) -> bool:
    return isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)


def _ratio(x: Any, y: Any) -> str:
    if _is_number(x) and _is_number(y) and float(x) > 0:
        return f"{float(y) / float(x):.2f}×"
    return ""


def _phases(run: SavedRun) -> dict[str, float]:
    out: dict[str, float] = {}
    for phase in run.metrics.get("phases") or []:
        if isinstance(phase, Mapping) and _is_number(phase.get("seconds")):
            name = str(phase.get("name"))
            out[name] = out.get(name, 0.0) + float(phase["seconds"])
    return out


def _site_metrics(run: SavedRun) -> dict[str, Mapping[str, Any]]:
    sites = run.metrics.get("sites")
    return {str(k): v for k, v in sites.items()} if isinstance(sites, Mapping) else {}


def _timings_part(a: SavedRun, b: SavedRun) -> list[str]:
    rows: list[list[str]] = [["", "A", "B", "B / A"]]

    def add(label: str, x: Any, y: Any, unit: str = "") -> None:
        def show(v: Any) -> str:
            if v is None:
                return "—"
            return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"

        rows.append([label, show(x), show(y), _ratio(x, y)])

    add("duration", a.manifest.get("duration_seconds"), b.manifest.get("duration_seconds"), " s")
    pa, pb = _phases(a), _phases(b)
    for name in [*pa, *(n for n in pb if n not in pa)]:
        add(f"phase {name}", pa.get(name), pb.get(name), " s")
    ra = [r for r in a.metrics.get("rounds") or [] if isinstance(r, Mapping)]
    rb = [r for r in b.metrics.get("rounds") or [] if isinstance(r, Mapping)]
    add("rounds", len(ra), len(rb))
    add(
        "rounds, all",
        sum(float(r.get("seconds") or 0.0) for r in ra),
        sum(float(r.get("seconds") or 0.0) for r in rb),
        " s",
    )
    sa, sb = _site_metrics(a), _site_metrics(b)
    for name in [*sa, *(n for n in sb if n not in sa)]:
        x, y = sa.get(name, {}), sb.get(name, {})
        for key, label in (
            ("bytes_to_site", "bytes to site"),
            ("bytes_from_site", "bytes from site"),
            ("cpu_seconds", "CPU s"),
        ):
            add(f"{name}: {label}", x.get(key), y.get(key))
        mib = [
            float(v["peak_rss_bytes"]) / 2**20 if _is_number(v.get("peak_rss_bytes")) else None
            for v in (x, y)
        ]
        add(f"{name}: peak RSS", mib[0], mib[1], " MiB")
    return ["timings:", *_columns(rows)]


def _heading(label: str, run: SavedRun) -> str:
    facts: Iterable[Any] = (
        run.name,
        run.app or run.manifest.get("platform") or "?",
        run.status,
        run.manifest.get("started") or "",
    )
    line = f"{label}  {run.path}  ({', '.join(str(f) for f in facts if f)})"
    if run.status != "completed" and run.error:
        line += f"\n   {label} {run.status}: {run.error}"
    return line


def compare_runs(a: SavedRun, b: SavedRun, *, all_values: bool = False) -> str:
    """Return the text ``fedflow compare`` prints for runs ``a`` and ``b`` (module docstring)."""
    parts = [
        [_heading("A", a), _heading("B", b)],
        _study_part(a, b),
        _data_part(a, b),
        _result_part(a, b, all_values=all_values),
        _timings_part(a, b),
    ]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"
