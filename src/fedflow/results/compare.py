"""Compare a federated result with its centralized twin, number by number.

``compare_results`` walks the federated result (as the app's ``comparable`` view selects it) and
pairs every number with the one at the same place in the centralized result. A pair matches when
``|fed - ref| <= atol + rtol * |ref|``. Booleans and strings must be equal. A number missing from
the reference is a mismatch: the twin must compute everything it is compared on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Comparison", "Item", "compare_results", "flatten"]


@dataclass(frozen=True)
class Item:
    """One compared value: where, federated and centralized values, differences, verdict."""

    path: str
    federated: Any
    centralized: Any
    abs_diff: float | None
    rel_diff: float | None
    tolerance: float
    match: bool


@dataclass
class Comparison:
    """All compared values and the overall verdict (``match`` or ``mismatch``)."""

    reference: str
    rtol: float
    atol: float
    items: list[Item] = field(default_factory=list)
    libraries: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``match`` when every value matched, else ``mismatch``."""
        return "match" if all(i.match for i in self.items) else "mismatch"

    @property
    def max_rel_diff(self) -> float:
        """The largest relative difference over all numbers (0.0 when there are none)."""
        diffs = [i.rel_diff for i in self.items if i.rel_diff is not None]
        return max(diffs, default=0.0)

    @property
    def mismatches(self) -> list[Item]:
        """The values that did not match."""
        return [i for i in self.items if not i.match]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form written to ``comparison.json``."""
        return {
            "status": self.status,
            "reference": self.reference,
            "libraries": self.libraries,
            "rtol": self.rtol,
            "atol": self.atol,
            "compared": len(self.items),
            "mismatched": len(self.mismatches),
            "max_rel_diff": self.max_rel_diff,
            "items": [asdict(i) for i in self.items],
        }


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Return ``{"a.b[2].c": leaf}`` for nested dicts and lists."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            out.update(flatten(sub, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_results(
    federated: Mapping[str, Any],
    centralized: Mapping[str, Any],
    *,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    reference: str = "",
    libraries: Mapping[str, str] | None = None,
) -> Comparison:
    """Return the number-by-number comparison of two results (see the module docstring)."""
    comparison = Comparison(
        reference=reference, rtol=rtol, atol=atol, libraries=dict(libraries or {})
    )
    ref = flatten(centralized)
    for path, fed in flatten(federated).items():
        if path not in ref:
            comparison.items.append(Item(path, fed, None, None, None, rtol, False))
            continue
        cen = ref[path]
        if _is_number(fed) and _is_number(cen):
            f, c = float(fed), float(cen)
            if math.isnan(f) or math.isnan(c):
                same = math.isnan(f) and math.isnan(c)
                comparison.items.append(Item(path, fed, cen, None, None, rtol, same))
                continue
            if math.isinf(f) or math.isinf(c):
                comparison.items.append(Item(path, fed, cen, None, None, rtol, f == c))
                continue
            diff = abs(f - c)
            rel = diff / abs(c) if c != 0 else (0.0 if diff == 0 else math.inf)
            comparison.items.append(
                Item(path, fed, cen, diff, rel, rtol, diff <= atol + rtol * abs(c))
            )
        elif fed is None or cen is None:
            comparison.items.append(
                Item(path, fed, cen, None, None, rtol, fed is None and cen is None)
            )
        else:
            comparison.items.append(Item(path, fed, cen, None, None, rtol, fed == cen))
    return comparison
