"""Project operations shared by ``fcauto`` and the ``featurecloud`` platform workflow."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedflow.errors import DataError, PlatformError, ProjectFailed, ProjectTimeout
from fedflow.featurecloud.client import ENDED, WAITING, FeatureCloudClient
from fedflow.featurecloud.controller import ControllerClient

__all__ = ["contribute", "monitor", "raise_for_outcome"]


def monitor(
    fc: FeatureCloudClient,
    project_id: int,
    *,
    timeout: float,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_status: Callable[[str], None] | None = None,
    shutdown_on_timeout: bool = True,
) -> dict[str, Any]:
    """Poll the project until its run ends or ``timeout`` seconds pass, in every status.

    Returns ``{"status", "history", "timed_out", "shut_down"}``; on a timeout a coordinator sets
    ``shutdown`` (when the project is preparing or running). Raises PlatformError on an unknown
    status. Never raises for a failed run: callers decide (see ProjectFailed / ProjectTimeout).
    """
    deadline = clock() + timeout
    history: list[str] = []
    while True:
        project = fc.project(project_id)
        status = str(project["status"])
        if not history or history[-1] != status:
            history.append(status)
            if on_status is not None:
                on_status(status)
        if status in ENDED:
            return {"status": status, "history": history, "timed_out": False, "shut_down": False}
        if status not in WAITING:
            raise PlatformError(
                f"FeatureCloud: project {project_id} has an unknown status {status!r}"
            )
        remaining = deadline - clock()
        if remaining <= 0:
            shut_down = False
            if (
                shutdown_on_timeout
                and status in ("prepare", "running")
                and project.get("role") == "coordinator"
            ):
                fc.set_status(project_id, "shutdown")
                shut_down = True
                status = fc.status(project_id)
                history.append(status)
            return {"status": status, "history": history, "timed_out": True, "shut_down": shut_down}
        sleep(min(interval, remaining))


def raise_for_outcome(
    project_id: int, outcome: dict[str, Any], timeout: float, *, site: str | None = None
) -> None:
    """Raise ProjectTimeout or ProjectFailed unless ``outcome`` (from ``monitor``) is ``finished``."""
    status = outcome["status"]
    if outcome["timed_out"]:
        shut = "; the coordinator shut it down" if outcome["shut_down"] else ""
        raise ProjectTimeout(
            f"FeatureCloud project {project_id} did not finish within {timeout:g} s "
            f"(status '{outcome['history'][-1]}'){shut}",
            status=status,
            site=site,
        )
    if status != "finished":
        raise ProjectFailed(
            f"FeatureCloud project {project_id} ended '{status}'", status=status, site=site
        )


def contribute(
    fc: FeatureCloudClient,
    controller: ControllerClient,
    project_id: int,
    files: Sequence[str | Path],
    *,
    on_action: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Upload ``files`` to the site's controller for the project and finalize, as the original did.

    A coordinator resets an ended project to ``ready`` and sets ``prepare`` when needed; a
    participant needs the project in ``prepare`` already. Returns ``{"files", "actions"}``.
    Raises DataError for a missing file, PlatformError when the project cannot take data.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no files to contribute")
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file to contribute", file=str(path))
    actions: list[str] = []

    def act(name: str) -> None:
        actions.append(name)
        if on_action is not None:
            on_action(name)

    project = fc.project(project_id)
    status, coordinator = str(project["status"]), project.get("role") == "coordinator"
    if status == "running":
        raise PlatformError(
            f"FeatureCloud project {project_id} is running; data cannot be contributed now"
        )
    if status in ENDED:
        if not coordinator:
            raise PlatformError(
                f"FeatureCloud project {project_id} is '{status}'; its coordinator must reset it (fcauto reset)"
            )
        fc.set_status(project_id, "ready")
        act("reset")
        status = "ready"
    if status != "prepare":
        if not coordinator:
            raise PlatformError(
                f"FeatureCloud project {project_id} is '{status}'; its coordinator must set 'prepare' first "
                "(fcauto prep)"
            )
        fc.set_status(project_id, "prepare")
        act("prepare")
    controller.require_running()
    names = controller.contribute(project_id, paths)
    act("finalize")
    return {"files": names, "actions": actions}
