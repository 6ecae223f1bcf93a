"""Compare a federated result with its centralized twin, number by number, on both sides.

``compare_results`` flattens both results (``{"a.b[2]": leaf}``) and walks the union of their
paths: every value on either side is compared, and a value present on one side only is listed as
missing there and counts as a mismatch — half an answer never matches. A pair of numbers matches
when ``|fed - ref| <= atol + rtol * |ref|`` with the tolerance of the longest matching path prefix
(``tolerances``; the ``""`` entry is the default; ``*`` in a prefix stands for any one key); booleans, strings and None must be equal, NaN
matches only NaN. Each item records the tolerance actually applied.

``comparison.json`` stays proportional to what a person reads: a group of values under one key
(``survival.timeline[…]``) with more than ``ITEMS_PER_GROUP`` values is summarised (count, worst
difference) and only its mismatches are listed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Comparison", "Item", "Tolerance", "compare_results", "flatten"]

ITEMS_PER_GROUP = 50
"""Values listed one by one per group in ``comparison.json`` (mismatches are always listed)."""
MISMATCHES_PER_GROUP = 100


@dataclass(frozen=True)
class Tolerance:
    """How far a federated number may be from its reference: ``atol + rtol * |reference|``."""

    rtol: float
    atol: float = 0.0


@dataclass(frozen=True)
class Item:
    """One compared value: where, both values, differences, the tolerance applied, verdict.

    ``missing`` names the side a value is absent from (``federated`` or ``centralized``).
    """

    path: str
    federated: Any
    centralized: Any
    abs_diff: float | None
    rel_diff: float | None
    rtol: float
    atol: float
    match: bool
    missing: str | None = None


@dataclass
class Comparison:
    """All compared values and the overall verdict (``match`` or ``mismatch``)."""

    reference: str
    items: list[Item] = field(default_factory=list)
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``match`` when something was compared and every value matched, else ``mismatch``."""
        return "match" if self.items and all(i.match for i in self.items) else "mismatch"

    @property
    def max_rel_diff(self) -> float:
        """The largest relative difference over all numbers (0.0 when there are none)."""
        diffs = [i.rel_diff for i in self.items if i.rel_diff is not None]
        return max(diffs, default=0.0)

    @property
    def mismatches(self) -> list[Item]:
        """The values that did not match (missing ones included)."""
        return [i for i in self.items if not i.match]

    @property
    def missing(self) -> list[Item]:
        """The values present on one side only."""
        return [i for i in self.items if i.missing]

    def groups(self) -> dict[str, list[Item]]:
        """Return the items by group: their path with list indices removed (``a.b[]``)."""
        out: dict[str, list[Item]] = {}
        for item in self.items:
            out.setdefault(_GROUP.sub("[]", item.path), []).append(item)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form written to ``comparison.json``."""
        listed: list[dict[str, Any]] = []
        summaries: list[dict[str, Any]] = []
        for group, items in self.groups().items():
            bad = [i for i in items if not i.match]
            if len(items) <= ITEMS_PER_GROUP:
                listed.extend(asdict(i) for i in items)
                continue
            listed.extend(asdict(i) for i in bad[:MISMATCHES_PER_GROUP])
            rel = [i.rel_diff for i in items if i.rel_diff is not None]
            absd = [i.abs_diff for i in items if i.abs_diff is not None]
            summaries.append(
                {
                    "group": group,
                    "compared": len(items),
                    "mismatched": len(bad),
                    "max_rel_diff": max(rel, default=0.0),
                    "max_abs_diff": max(absd, default=0.0),
                    "rtol": items[0].rtol,
                    "atol": items[0].atol,
                }
            )
        return {
            "status": self.status,
            "reference": self.reference,
            "libraries": self.libraries,
            "tolerances": {k: asdict(v) for k, v in self.tolerances.items()},
            "compared": len(self.items),
            "mismatched": len(self.mismatches),
            "missing": len(self.missing),
            "max_rel_diff": self.max_rel_diff,
            "summarised": summaries,
            "items": listed,
        }


_GROUP = re.compile(r"\[\d+\]")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Return ``{"a.b[2].c": leaf}`` for nested dicts and lists (an empty one is a leaf)."""
    out: dict[str, Any] = {}
    if not prefix and isinstance(value, Mapping) and not value:
        return out  # an empty result has no values
    if isinstance(value, Mapping) and value:
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)) and value:
        for i, sub in enumerate(value):
            out.update(flatten(sub, f"{prefix}[{i}]"))
    elif hasattr(value, "tolist") and not isinstance(value, (int, float, bool)):
        out.update(flatten(value.tolist(), prefix))  # numpy arrays and scalars
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _prefix_pattern(prefix: str) -> re.Pattern[str]:
    """Return the regex of a tolerance prefix: ``*`` stands for one key (``timeline.*.at_risk``)."""
    body = re.escape(prefix).replace(r"\*", r"[^.\[]+")
    return re.compile(body + r"(?:$|[.\[])")


def _tolerance_for(path: str, rules: Mapping[str, Tolerance]) -> Tolerance:
    best = ""
    for prefix in rules:
        if len(prefix) > len(best) and _prefix_pattern(prefix).match(path):
            best = prefix
    return rules[best]


def _compare(path: str, fed: Any, cen: Any, tol: Tolerance) -> Item:
    def item(abs_diff: float | None, rel_diff: float | None, match: bool) -> Item:
        return Item(path, fed, cen, abs_diff, rel_diff, tol.rtol, tol.atol, match)

    if _is_number(fed) and _is_number(cen):
        f, c = float(fed), float(cen)
        if math.isnan(f) or math.isnan(c):
            return item(None, None, math.isnan(f) and math.isnan(c))
        if math.isinf(f) or math.isinf(c):
            return item(None, None, f == c)
        diff = abs(f - c)
        rel = diff / abs(c) if c != 0 else (0.0 if diff == 0 else math.inf)
        return item(diff, rel, diff <= tol.atol + tol.rtol * abs(c))
    return item(None, None, type(fed) is type(cen) and fed == cen)


def compare_results(
    federated: Mapping[str, Any],
    centralized: Mapping[str, Any],
    *,
    tolerances: Mapping[str, Tolerance] | Tolerance = Tolerance(1e-8, 1e-12),
    reference: str = "",
    libraries: Mapping[str, str] | None = None,
) -> Comparison:
    """Return the two-sided, value-by-value comparison of two results (see the module docstring).

    ``tolerances`` maps path prefixes to tolerances (``""``: every other value) or is one
    tolerance for all.
    """
    rules = dict(tolerances) if isinstance(tolerances, Mapping) else {"": tolerances}
    rules.setdefault("", Tolerance(1e-8, 1e-12))
    comparison = Comparison(reference=reference, tolerances=rules, libraries=dict(libraries or {}))
    fed_flat, ref_flat = flatten(federated), flatten(centralized)
    for path in [*fed_flat, *(p for p in ref_flat if p not in fed_flat)]:
        tol = _tolerance_for(path, rules)
        if path not in ref_flat or path not in fed_flat:
            side = "centralized" if path not in ref_flat else "federated"
            comparison.items.append(
                Item(
                    path,
                    fed_flat.get(path),
                    ref_flat.get(path),
                    None,
                    None,
                    tol.rtol,
                    tol.atol,
                    False,
                    side,
                )
            )
            continue
        comparison.items.append(_compare(path, fed_flat[path], ref_flat[path], tol))
    return comparison
