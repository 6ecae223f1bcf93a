"""``fedflow validate``: check a study without running it.

Checks the file (keys, types), the app and its parameters, and — for every site whose data is on
this machine — that the files exist, are readable, and hold the columns the app needs with usable
values, exactly as the site itself would check them at the start of a run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from fedflow.connectors.memory import MemoryConnector
from fedflow.node.agent import NodeAgent
from fedflow.runtime.coordinator import Coordinator
from fedflow.runtime.run import check_study
from fedflow.study import load_study

__all__ = ["ValidationReport", "validate_study"]


@dataclass
class ValidationReport:
    """One line per checked site, and how many sites could only be checked at run time."""

    lines: list[str] = field(default_factory=list)
    unchecked: int = 0


def validate_study(path: str | Path) -> ValidationReport:
    """Validate the study at ``path``; raise the first problem as a FedflowError.

    Every site whose data is on this machine is checked by a real node agent (in this process)
    through the coordinator's own handshake and prepare steps: the same reading, resolving and
    column checks as at the start of a run, with no round.
    """
    study = load_study(path)
    if study.app == "train" and study.platform == "native":  # its plan, found from the study
        from fedflow.training.study import prepare_training

        study = prepare_training(study)
    app = check_study(study)
    report = ValidationReport()
    if app is None:
        if study.platform == "featurecloud":
            from fedflow.featurecloud.workflow import preflight

            report.lines.extend(preflight(study))
        report.lines.append(f"platform '{study.platform}': {len(study.clients)} site(s)")
        return report
    local = []
    for client in study.clients:
        if not client.is_local and study.skip_data_transfer:
            report.unchecked += 1
            report.lines.append(
                f"{client.name}: remote data, checked at the site when the run starts"
            )
            continue
        local.append(client)
    if not local:
        return report
    assert study.app is not None  # check_study returned an app
    coordinator = Coordinator(
        study.app,
        study.params,
        {c.name: MemoryConnector(c.name, handler=NodeAgent(c.name).handle) for c in local},
        {c.name: c.data for c in local},
        setup={c.name: c.reading() for c in local},
        timeout=study.timeout,
        min_count=study.min_count,
        seed=study.seed,
        dropna=study.dropna,
    )
    sites = asyncio.run(coordinator.check())
    needed = ", ".join(coordinator.driver.app.columns(coordinator.driver.params)) or "all"
    for name, site in sites.items():
        files = ", ".join(f.name for f in site.ready.files) if site.ready else "?"
        report.lines.append(
            f"{name}: {site.rows_used} usable rows in {files}; columns ok ({needed})"
        )
    return report
