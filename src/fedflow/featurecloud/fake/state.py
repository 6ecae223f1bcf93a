"""The fake platform's state: accounts, projects, runs, and the status machine that moves them.

    init ──workflow saved──▶ ready ──prepare──▶ prepare ──every site finalized──▶ running
    running ──run_seconds later──▶ finished | failed        prepare | running ──shutdown──▶ stopped
    finished | failed | error | stopped | ready ──ready──▶ ready

Each transition is one function that raises ``HTTPFail`` (400/403/404, with the platform's kind
of message) for anything the contract does not allow; the web API (``web.py``) calls them under
its lock with the time of its clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedflow.featurecloud.fake.server import HTTPFail

__all__ = [
    "APPS",
    "SITE_FIELDS",
    "SITE_KEY_HEADER",
    "Project",
    "ProjectRun",
    "User",
    "advance",
    "app_by_id",
    "app_slug",
    "iso",
    "project_json",
    "put_workflow",
    "set_status",
    "start_run",
]

APPS: list[dict[str, Any]] = [
    {"id": 1, "slug": "mean-app", "name": "Mean"},
    {"id": 2, "slug": "federated-svd", "name": "Federated SVD"},
    {"id": 3, "slug": "random-forest", "name": "Random Forest"},
    {"id": 4, "slug": "ada-boost", "name": "AdaBoost"},
]
SITE_KEY_HEADER = "X-Fake-Site-Key"
SITE_FIELDS = (
    "name",
    "organization",
    "address",
    "zip",
    "city",
    "country",
    "firstName",
    "lastName",
    "phone",
)


@dataclass
class User:
    """An account, its site (with the ``controllerKey``) and the apps it bought."""

    username: str
    password: str
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    role: str = "user"
    site: dict[str, Any] | None = None
    purchased: set[int] = field(default_factory=set)


@dataclass
class ProjectRun:
    """One run of a project: its outcome is decided at start, its status changes at ``ends_at``."""

    nr: int
    started: float
    started_on: str
    ends_at: float
    outcome: str
    status: str = "running"
    logs: dict[str, list[str]] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    local: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Project:
    """A project: its coordinator, participants, workflow, status and runs."""

    id: int
    name: str
    description: str
    coordinator: str
    status: str = "init"
    participants: list[str] = field(default_factory=list)
    workflow: list[dict[str, Any]] = field(default_factory=list)
    finalized: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[ProjectRun] = field(default_factory=list)


def iso(ts: float | None = None) -> str:
    """Return ``ts`` (default now) as an ISO 8601 UTC time in seconds (``…Z``)."""
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def app_by_id(app_id: str) -> dict[str, Any]:
    """Return the app with number ``app_id``. Raises HTTPFail(404)."""
    app = next((a for a in APPS if a["id"] == int(app_id)), None)
    if app is None:
        raise HTTPFail(404, f"app {app_id} not found")
    return app


def app_slug(project: Project) -> str | None:
    """Return the slug of the project's app (None before a workflow is saved)."""
    if not project.workflow:
        return None
    app_id = project.workflow[0]["federatedApp"]["id"]
    return next(a["slug"] for a in APPS if a["id"] == app_id)


def advance(project: Project, now: float) -> None:
    """End a running project's run when its time is up (status ``finished`` or ``failed``)."""
    if project.status == "running" and project.runs:
        run = project.runs[-1]
        if now >= run.ends_at:
            run.status = project.status = run.outcome
            for lines in run.logs.values():
                lines.append(f"run {run.nr} {run.outcome}")


def project_json(project: Project, user: User) -> dict[str, Any]:
    """Return a project as the web API shows it to ``user``."""
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description,
        "status": project.status,
        "role": "coordinator" if user.username == project.coordinator else "participant",
        "workflow": project.workflow,
        "participants": len(project.participants),
    }


def put_workflow(project: Project, user: User, body: dict[str, Any]) -> None:
    """Save a one-step workflow (the project becomes ``ready``). Raises HTTPFail(400/403/404)."""
    allowed = {"id", "name", "description", "status", "workflow"}
    extra = sorted(set(body) - allowed)
    if extra:
        raise HTTPFail(400, f"unexpected key(s): {', '.join(extra)}")
    if body["status"] != "ready":
        raise HTTPFail(400, "a project with a workflow is saved with status 'ready'")
    if project.status not in ("init", "ready"):
        raise HTTPFail(
            400,
            f"the workflow of project {project.id} cannot change in status '{project.status}'",
        )
    if "id" in body and body["id"] != project.id:
        raise HTTPFail(400, f"id {body['id']!r} does not match project {project.id}")
    steps = body["workflow"]
    if not isinstance(steps, list) or not steps:
        raise HTTPFail(400, "workflow must be a non-empty list")
    keys = {"id", "projectId", "federatedApp", "order", "versionCertificationLevel"}
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or set(step) != keys:
            raise HTTPFail(400, f"workflow[{i}] needs exactly the keys {', '.join(sorted(keys))}")
        if step["projectId"] != project.id:
            raise HTTPFail(400, f"workflow[{i}].projectId does not match project {project.id}")
        app_ref = step["federatedApp"]
        if not isinstance(app_ref, dict) or not isinstance(app_ref.get("id"), int):
            raise HTTPFail(400, f"workflow[{i}].federatedApp needs an integer 'id'")
        app = app_by_id(str(app_ref["id"]))
        if app["id"] not in user.purchased:
            raise HTTPFail(
                403, f"app '{app['slug']}' is not among the apps of user '{user.username}'"
            )
    if len(steps) != 1:
        raise HTTPFail(400, "the fake platform runs one-step workflows only")
    project.workflow = steps
    project.name = str(body.get("name", project.name))
    project.description = str(body.get("description", project.description))
    project.status = "ready"


def set_status(project: Project, status: str) -> None:
    """Move the project to ``prepare``, ``shutdown`` (→ ``stopped``) or back to ``ready``.

    Raises HTTPFail(400) for a transition the platform does not allow.
    """
    current = project.status
    if status == "prepare":
        if current != "ready":
            raise HTTPFail(
                400,
                f"'prepare' can only be reached from 'ready' (project {project.id} is '{current}')",
            )
        project.finalized.clear()
        project.status = "prepare"
    elif status == "shutdown":
        if current not in ("prepare", "running"):
            raise HTTPFail(
                400,
                f"project {project.id} is '{current}'; only a preparing or running project can be shut down",
            )
        if current == "running":
            run = project.runs[-1]
            run.status = "stopped"
            for lines in run.logs.values():
                lines.append(f"run {run.nr} stopped by the coordinator")
        project.status = "stopped"
    elif status == "ready":
        if current not in ("ready", "finished", "failed", "error", "stopped"):
            raise HTTPFail(
                400,
                f"project {project.id} is '{current}'; only an ended run can be reset to 'ready'",
            )
        if not project.workflow:
            raise HTTPFail(400, f"project {project.id} has no workflow")
        project.finalized.clear()
        project.status = "ready"
    else:
        raise HTTPFail(400, f"status '{status}' cannot be set (use prepare, shutdown or ready)")


def start_run(project: Project, now: float, run_seconds: float) -> None:
    """Start the project's next run (every participant has finalized); it ends after
    ``run_seconds`` with the mean over all sites (``mean-app``) or fails saying why."""
    run = ProjectRun(len(project.runs) + 1, now, iso(), now + run_seconds, "finished")
    slug = app_slug(project)
    for username in project.participants:
        files = project.finalized[username]["files"]
        run.logs[username] = [
            f"run {run.nr} of project {project.id} started ({slug})",
            f"{username}: {len(files)} file(s)",
        ]
    errors = {
        u: f["summary"].get("error")
        for u, f in project.finalized.items()
        if f["summary"].get("error")
    }
    if slug != "mean-app":
        run.outcome = "failed"
        for lines in run.logs.values():
            lines.append(f"error: the fake platform does not simulate app '{slug}' (only mean-app)")
    elif errors:
        run.outcome = "failed"
        for username, lines in run.logs.items():
            for who, message in errors.items():
                lines.append(
                    f"error at this site: {message}" if who == username else "error at another site"
                )
    else:
        total = sum(float(f["summary"]["sum"]) for f in project.finalized.values())
        count = sum(int(f["summary"]["count"]) for f in project.finalized.values())
        if count == 0:
            run.outcome = "failed"
            for lines in run.logs.values():
                lines.append("error: no numbers in any contribution")
        else:
            run.result = {"mean": total / count, "n": count, "sites": len(project.participants)}
            for username, contribution in project.finalized.items():
                local = contribution["summary"]
                run.local[username] = {"n": int(local["count"]), "sum": float(local["sum"])}
                run.logs[username].append(
                    f"local n={int(local['count'])}; global n={count}, mean={total / count!r}"
                )
    project.runs.append(run)
    project.status = "running"
