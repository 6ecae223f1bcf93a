"""``fedflow validate``: check a study without running it.

Checks the file (keys, types), the app and its parameters, and — for every site whose data is on
this machine — that the files exist, are readable, and hold the columns the app needs with usable
values, exactly as the site itself would check them at the start of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedflow.apps.base import SiteInfo, merged_columns
from fedflow.node.data import column_kind, prepare_table, read_table
from fedflow.runtime.run import check_study
from fedflow.study import load_study

__all__ = ["ValidationReport", "validate_study"]


@dataclass
class ValidationReport:
    """One line per checked site, and how many sites could only be checked at run time."""

    lines: list[str] = field(default_factory=list)
    unchecked: int = 0


def validate_study(path: str | Path) -> ValidationReport:
    """Validate the study at ``path``; raise the first problem as a FedflowError."""
    study = load_study(path)
    app = check_study(study)
    report = ValidationReport()
    if app is None:
        report.lines.append(f"platform '{study.platform}': {len(study.clients)} site(s)")
        return report
    loaded = {}
    for client in study.clients:
        if not client.is_local and study.skip_data_transfer:
            report.unchecked += 1
            report.lines.append(
                f"{client.name}: remote data, checked at the site when the run starts"
            )
            continue
        loaded[client.name] = read_table(client.data, site=client.name, **client.reading())
    if not loaded:
        return report
    infos = {
        name: SiteInfo(
            name, data.table.n_rows, {c: column_kind(data.table[c]) for c in data.table.columns}
        )
        for name, data in loaded.items()
    }
    params = app.resolve(app.parse_params(study.params), merged_columns(infos))
    needed = app.columns(params)
    for name, data in loaded.items():
        try:
            table = prepare_table(data, needed, dropna=study.dropna, min_count=study.min_count)
        except Exception as exc:
            if hasattr(exc, "site") and exc.site is None:
                exc.site = name
            raise
        report.lines.append(
            f"{name}: {table.n_rows} usable rows in {', '.join(f.name for f in data.files)}; "
            f"columns ok ({', '.join(needed) or 'all'})"
        )
    return report
