"""The result object of one run: its directory, result, metrics, manifest and comparison.

``fedflow.run()`` and ``fedflow.runtime.run_study`` return a ``Run``; it prints a readable table in
a terminal (rich) and renders in a notebook. It lives in ``results/`` (not ``runtime/``) so that the
layers that write results (the FeatureCloud workflow, the reports) never import the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Run"]


@dataclass
class Run:
    """A finished run: its directory, result, metrics, manifest and (with --compare) comparison."""

    dir: Path
    status: str
    app: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    comparison: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool | None:
        """True/False when compared with the pooled reference, None when not compared."""
        return None if self.comparison is None else self.comparison["status"] == "match"

    def summary(self) -> Any:
        """Return a rich renderable of the result (tables), for terminals and notebooks."""
        from fedflow.results.report import result_renderable

        return result_renderable(self)

    def __repr__(self) -> str:
        rounds = self.manifest.get("rounds")
        shown = [self.status, self.app or self.manifest.get("platform") or "?"]
        if rounds:
            shown.append(f"{rounds} round{'s' if rounds != 1 else ''}")
        if self.comparison is not None:
            shown.append("matches" if self.matches else "MISMATCH")
        return f"<Run {' '.join(str(x) for x in shown)} {str(self.dir)!r}>"

    def __rich__(self) -> Any:
        return self.summary()

    def __str__(self) -> str:
        from fedflow.results.report import render_text

        return render_text(self.summary())

    def _repr_html_(self) -> str:
        from fedflow.results.report import render_html

        return render_html(self.summary())
