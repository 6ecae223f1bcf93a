"""``platform = "featurecloud"``: the original fedflow's pipeline, headless.

    validate    every client has fc_username and data; passwords in .env; one coordinator
    login       each site's user logs in to the web API; its site info is fetched
    controllers each site's controller gets site_info.json in its data folder and is started
                (or reused when one already answers at the site's controller URL)
    project     the coordinator creates the project for ``tool`` (buying the app when needed)
                or takes ``project_id`` (resetting an ended run to 'ready')
    join        one token per participant; each joins
    prepare     the coordinator sets 'prepare'
    upload      every site uploads its data to its own controller and finalizes
    run         the coordinator monitors until the run ends or the study's timeout passes (then it
                sets 'shutdown')
    download    every site downloads every log and result step of the most recent run: logs to
                ``logs/<site>-run<n>-step<s>.log``, result archives unpacked under ``sites/<site>/``
    stop        controllers this run started are stopped

The web API is shared by all sites' users, so they share one rate limiter (3 requests/s by
default). Environment: ``FEATURECLOUD_URL`` (web API), ``FEATURECLOUD_RATE`` (requests/s; more
than 3 only for a local server), ``FEATURECLOUD_POLL`` (seconds between status queries, default 5).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import httpx

from fedflow.errors import FedflowError, PlatformError, PlatformHTTPError, SiteError, StudyError
from fedflow.featurecloud._http import Policy, is_loopback
from fedflow.featurecloud.client import DEFAULT_URL, ENDED, FeatureCloudClient
from fedflow.featurecloud.controller import DEFAULT_CONTROLLER, ControllerClient
from fedflow.featurecloud.ops import monitor, raise_for_outcome
from fedflow.featurecloud.ratelimit import DEFAULT_RATE
from fedflow.results.rundir import RunDirectory, json_ready
from fedflow.study.env import (
    Credentials,
    load_credentials,
    permission_problem,
    require_env_file,
)
from fedflow.study.schema import Client, Study

__all__ = [
    "LocalSiteOps",
    "Settings",
    "SiteOps",
    "default_data_dir",
    "preflight",
    "run_featurecloud",
]


class SiteOps(Protocol):
    """Provisioning and controller start/stop at a site (tests inject fake controllers)."""

    def start(self, site: Client, data_dir: Path) -> str:
        """Make the site's controller run on ``data_dir``; return its URL."""

    def stop(self, site: Client) -> None:
        """Stop the site's controller if ``start`` started it."""


def default_data_dir(study: Study, client: Client) -> Path:
    """Return the controller data folder of a local site: ``<study folder>/.featurecloud/<site>``."""
    return study.folder / ".featurecloud" / client.name


@dataclass
class Settings:
    """Where the web API is, how politely to talk to it, how often to poll."""

    url: str = DEFAULT_URL
    policy: Policy = field(default_factory=Policy)
    poll_interval: float = 5.0
    timeout: float | None = None
    """Seconds to wait for the run (default: the study's ``timeout``)."""
    env_file: Path | None = None
    """The credentials file (default: ``.env`` in the study's folder, else the working folder)."""

    @classmethod
    def from_env(cls) -> Settings:
        """Read FEATURECLOUD_URL, FEATURECLOUD_RATE and FEATURECLOUD_POLL. Raises StudyError."""
        url = os.environ.get("FEATURECLOUD_URL") or DEFAULT_URL
        policy = Policy()
        settings = cls(url=url, policy=policy)
        for name in ("FEATURECLOUD_RATE", "FEATURECLOUD_POLL"):
            raw = os.environ.get(name)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                raise StudyError(f"environment variable {name}={raw!r}: not a number") from None
            if value <= 0:
                raise StudyError(f"environment variable {name}={raw!r}: must be positive")
            if name == "FEATURECLOUD_RATE":
                if value > DEFAULT_RATE and not is_loopback(url):
                    raise StudyError(
                        f"FEATURECLOUD_RATE={raw}: more than {DEFAULT_RATE:g} requests/s is allowed only "
                        f"against a local server ({url} is not local)"
                    )
                policy.rate = value
            else:
                settings.poll_interval = value
        return settings


class LocalSiteOps:
    """The real site operations for sites whose controller this machine can reach.

    A controller that already answers at the site's URL is used as it is (and left running).
    Otherwise, for a local site, the study's ``provision_script`` runs (once), then
    ``featurecloud controller start --data-dir DIR`` (needs Docker and the ``featurecloud``
    package); the controller is stopped at the end. Remote sites need ``controller = URL``
    pointing at a running controller (e.g. through an SSH tunnel).
    """

    def __init__(
        self,
        study: Study,
        *,
        start_timeout: float = 120.0,
        ping_interval: float = 2.0,
        policy: Policy | None = None,
    ) -> None:
        self.study = study
        self.start_timeout = start_timeout
        self.ping_interval = ping_interval
        self.policy = policy or Policy(retries=0)
        self.started: set[str] = set()
        self._provisioned = False

    def _ping(self, url: str) -> bool:
        with ControllerClient(url, policy=self.policy) as ctl:
            return ctl.ping()

    def _run(self, site: Client, argv: list[str]) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SiteError(f"`{' '.join(argv)}` failed: {exc}", site=site.name) from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SiteError(
                f"`{' '.join(argv)}` exited {done.returncode}: {tail[0]}", site=site.name
            )

    def start(self, site: Client, data_dir: Path) -> str:
        """Reuse or start the site's controller; return its URL. Raises SiteError/StudyError."""
        url = site.controller or DEFAULT_CONTROLLER
        if not site.is_local and not site.controller:
            raise StudyError(
                f"site '{site.name}': a remote FeatureCloud site needs controller = \"URL\" (a running "
                "controller reachable from here, e.g. through an SSH tunnel)"
            )
        if self._ping(url):
            return url
        if not site.is_local:
            raise SiteError(
                f"no FeatureCloud controller answers at {url}; start it at the site first",
                site=site.name,
            )
        if self.study.provision_script and not self._provisioned:
            self._run(site, ["sh", str(self.study.resolve(self.study.provision_script))])
            self._provisioned = True
        for tool, hint in (
            ("docker", "install Docker"),
            ("featurecloud", "pip install featurecloud"),
        ):
            if shutil.which(tool) is None:
                raise SiteError(
                    f"no controller answers at {url} and `{tool}` is not installed ({hint})",
                    site=site.name,
                )
        self._run(site, ["featurecloud", "controller", "start", "--data-dir", str(data_dir)])
        self.started.add(site.name)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._ping(url):
                return url
            time.sleep(self.ping_interval)
        raise SiteError(f"the controller started but does not answer at {url}", site=site.name)

    def stop(self, site: Client) -> None:
        """Stop the controller if this run started it."""
        if site.name in self.started:
            self.started.discard(site.name)
            self._run(site, ["featurecloud", "controller", "stop"])


@dataclass
class _Site:
    client: Client
    password: str
    data_dir: Path
    web: FeatureCloudClient | None = None
    controller: ControllerClient | None = None
    started: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.client.name


def _check(study: Study, credentials: Credentials) -> list[_Site]:
    """Validate the study for FeatureCloud before any request; return the sites."""
    if study.coordinator is None:
        raise StudyError(
            f"{study.source or 'study'}: platform 'featurecloud' needs one client with coordinator = true"
        )
    users: dict[str, str] = {}
    sites = []
    for client in study.clients:
        if not client.fc_username:
            raise StudyError(
                f"site '{client.name}': fc_username is missing (the site's FeatureCloud user)"
            )
        if client.fc_username in users:
            raise StudyError(
                f"sites '{users[client.fc_username]}' and '{client.name}' share the FeatureCloud user "
                f"'{client.fc_username}'; each site needs its own"
            )
        users[client.fc_username] = client.name
        if not client.data:
            raise StudyError(f"site '{client.name}': no data to contribute (data = [...])")
        if not client.is_local and study.skip_data_transfer:
            raise StudyError(
                f"site '{client.name}': the featurecloud platform uploads data from this machine; "
                "skip_data_transfer = true is not supported"
            )
        for path in client.data:
            if not Path(path).is_file():
                raise StudyError(f"site '{client.name}': data file {path} does not exist")
        sites.append(
            _Site(client, credentials.password(client.fc_username), default_data_dir(study, client))
        )
    return sites


def preflight(study: Study, env_file: Path | None = None) -> list[str]:
    """Check a FeatureCloud study as ``fedflow run`` does before its first request (``.env`` in
    the study's folder or the working folder, a password per user, one coordinator, data files);
    return one line per site, plus a warning line when ``.env`` is readable by others.

    Raises StudyError for the first problem.
    """
    env = env_file or require_env_file([study.folder, Path.cwd()])
    sites = _check(study, load_credentials(env, warn=False))
    lines = [
        f"{site.name}: FeatureCloud user '{site.client.fc_username}'"
        f"{' (coordinator)' if site.client.coordinator else ''}, "
        f"{len(site.client.data)} data file(s), controller "
        f"{site.client.controller or DEFAULT_CONTROLLER}"
        for site in sites
    ]
    problem = permission_problem(env)
    if problem:
        lines.append(f"warning: {problem}")
    return lines


def _unpack(archive: Path, target: Path) -> list[Path]:
    """Extract ``archive`` into ``target``; refuse members that would land outside it."""
    out = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                    raise PlatformError(
                        f"{archive.name}: unsafe path {member.filename!r} in the result archive"
                    )
                if member.is_dir():
                    continue
                dest = target.joinpath(*name.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, dest.open("wb") as fh:
                    shutil.copyfileobj(src, fh)
                out.append(dest)
    except zipfile.BadZipFile:
        raise PlatformError(f"{archive.name}: the result archive is not a zip file") from None
    return out


class _Pipeline:
    def __init__(
        self,
        study: Study,
        rundir: RunDirectory,
        notify: Callable[..., None],
        settings: Settings,
        ops: SiteOps,
        web_transport: httpx.BaseTransport | None,
        controller_transport: httpx.BaseTransport | None,
    ) -> None:
        self.study = study
        self.rd = rundir
        self.notify = notify
        self.settings = settings
        self.ops = ops
        self.web_transport = web_transport
        self.controller_transport = controller_transport
        self.limiter = settings.policy.limiter()
        self.summary: dict[str, Any] = {
            "platform": "featurecloud",
            "url": settings.url,
            "project_id": None,
            "tool": study.tool,
            "created_project": False,
            "status": None,
            "run": None,
            "history": [],
            "sites": {},
        }

    def say(self, site: _Site | None, text: str, status: str = "working") -> None:
        if site is not None:
            site.log.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}")
            self.notify("site", site.name, status, text)
        else:
            self.notify("message", f"featurecloud: {text}")

    def phase(self, name: str) -> Any:
        self.notify("phase", f"featurecloud: {name}")
        return self.rd.phase(f"featurecloud {name}")

    def run(self) -> dict[str, Any]:
        env_file = self.settings.env_file or require_env_file([self.study.folder, Path.cwd()])
        with self.phase("validate"):
            credentials = load_credentials(env_file, warn=False)
            problem = permission_problem(env_file)
            if problem:
                self.say(None, f"warning: {problem}")
            sites = _check(self.study, credentials)
        self.sites = sites
        for site in sites:
            self.summary["sites"][site.name] = {
                "fc_username": site.client.fc_username,
                "files": [],
                "logs": [],
            }
        try:
            return self._run(sites)
        finally:
            self._stop(sites)
            for site in sites:
                if site.log:
                    with self.rd.log_path(site.name).open("a", encoding="utf-8") as fh:
                        fh.write("\n".join(site.log) + "\n")
                requests = {
                    "web_requests": site.web.http.requests_sent if site.web else 0,
                    "controller_requests": site.controller.http.requests_sent
                    if site.controller
                    else 0,
                }
                self.rd.metrics.setdefault("sites", {}).setdefault(site.name, {}).update(requests)
                if site.web is not None:
                    site.web.close()
                if site.controller is not None:
                    site.controller.close()
            self.rd.write_json("featurecloud.json", self.summary)

    def _run(self, sites: list[_Site]) -> dict[str, Any]:
        study, summary = self.study, self.summary
        coord = next(s for s in sites if s.client.coordinator)
        others = [s for s in sites if s is not coord]
        with self.phase("login"):
            for site in sites:
                site.web = FeatureCloudClient(
                    site.client.fc_username or "",
                    site.password,
                    url=self.settings.url,
                    transport=self.web_transport,
                    limiter=self.limiter,
                    policy=self.settings.policy,
                )
                site.web.login()
                site.info = site.web.site_info()
                self.say(site, f"logged in as {site.client.fc_username}")
        with self.phase("controllers"):
            urls: dict[str, str] = {}
            for site in sites:
                site.data_dir.mkdir(parents=True, exist_ok=True)
                info_path = site.data_dir / "site_info.json"
                info_path.write_text(json.dumps(site.info), encoding="utf-8")
                info_path.chmod(0o600)
                url = self.ops.start(site.client, site.data_dir)
                site.started = True
                if url in urls:
                    raise StudyError(
                        f"sites '{urls[url]}' and '{site.name}' use the same controller {url}; "
                        "each site needs its own controller"
                    )
                urls[url] = site.name
                site.controller = ControllerClient(
                    url, transport=self.controller_transport, policy=self.settings.policy
                )
                site.controller.require_running()
                summary["sites"][site.name]["controller"] = url
                self.say(site, f"controller running at {url}")
        assert coord.web is not None
        with self.phase("project"):
            pid = self._project(coord)
        with self.phase("join"):
            for site in others:
                assert site.web is not None
                if not summary["created_project"] and self._is_member(site, pid):
                    self.say(site, f"already a member of project {pid}")
                    continue
                token = coord.web.create_token(pid)["token"]
                site.web.join(str(token))
                self.say(site, f"joined project {pid}")
        with self.phase("prepare"):
            coord.web.set_status(pid, "prepare")
            self.say(coord, f"project {pid} set to 'prepare'")
        with self.phase("upload"):
            for site in sites:
                assert site.controller is not None
                try:
                    names = site.controller.contribute(pid, site.client.data)
                except PlatformError as exc:
                    if "site_info" not in str(exc) and "site info" not in str(exc):
                        raise
                    exc.message = (
                        f"{exc.message} (fedflow wrote this site's site_info.json to "
                        f"{site.data_dir}: a controller started by hand must use that folder, "
                        f"e.g. --data-dir {site.data_dir})"
                    )
                    exc.args = (exc.message,)
                    raise
                summary["sites"][site.name]["uploaded"] = names
                self.say(site, f"uploaded {len(names)} file(s) and finalized")
        timeout = self.settings.timeout if self.settings.timeout is not None else study.timeout
        with self.phase("run"):
            outcome = monitor(
                coord.web,
                pid,
                timeout=timeout,
                interval=self.settings.poll_interval,
                clock=self.settings.policy.clock,
                sleep=self.settings.policy.sleep,
                on_status=lambda s: self.say(None, f"project {pid}: {s}"),
            )
        summary["status"] = outcome["status"]
        summary["history"] = outcome["history"]
        summary["timed_out"] = outcome["timed_out"]
        with self.phase("download"):
            for site in sites:
                self._download(site, pid)
        summary["result"] = self._app_result(coord)
        raise_for_outcome(pid, outcome, timeout)
        return json_ready(summary)

    def _project(self, coord: _Site) -> int:
        assert coord.web is not None
        summary = self.summary
        if self.study.project_id is not None:
            pid = int(self.study.project_id)
            if self.study.tool:
                self.say(
                    None,
                    f"project_id = {pid} given: tool '{self.study.tool}' is not used to create a project",
                )
            try:
                project = coord.web.project(pid)
            except PlatformHTTPError as exc:
                raise PlatformError(
                    f"project_id = {pid}: user '{coord.client.fc_username}' cannot open it ({exc})",
                    site=coord.name,
                ) from None
            if project.get("role") != "coordinator":
                raise PlatformError(
                    f"project_id = {pid}: user '{coord.client.fc_username}' is not its coordinator",
                    site=coord.name,
                )
            status = str(project["status"])
            if status in ENDED:
                coord.web.set_status(pid, "ready")
                self.say(coord, f"project {pid} was '{status}'; reset to 'ready'")
            elif status != "ready":
                raise PlatformError(
                    f"project_id = {pid} is '{status}'; it must be 'ready' or ended to start a run"
                )
        else:
            assert self.study.tool is not None
            app_id, bought = coord.web.ensure_app(self.study.tool)
            if bought:
                self.say(coord, f"bought app '{self.study.tool}' for {coord.client.fc_username}")
            pid = coord.web.create_project_for_tool(self.study.tool)
            summary["created_project"] = True
            summary["app_id"] = app_id
            self.say(coord, f"created project {pid} for '{self.study.tool}'")
        summary["project_id"] = pid
        return pid

    def _is_member(self, site: _Site, pid: int) -> bool:
        assert site.web is not None
        try:
            site.web.project(pid)
        except PlatformHTTPError as exc:
            if exc.status == 403:
                return False
            raise
        return True

    def _download(self, site: _Site, pid: int) -> None:
        assert site.controller is not None
        entry = self.summary["sites"][site.name]
        with tempfile.TemporaryDirectory(prefix="fedflow-fc-") as tmp:
            try:
                got = site.controller.download_latest(pid, tmp)
            except PlatformError as exc:
                entry["download_error"] = str(exc)
                self.say(site, f"download failed: {exc}", "failed")
                return
            run = int(got["run"])
            self.summary["run"] = run
            for path in got["logs"]:
                step = path.stem.rsplit("_s", 1)[-1]
                target = self.rd.logs_dir / f"{site.name}-run{run}-step{step}.log"
                shutil.copyfile(path, target)
                entry["logs"].append(str(target.relative_to(self.rd.path)))
            results = got["results"]
            for path in results:
                step = path.stem.rsplit("_s", 1)[-1]
                target = self.rd.site_dir(site.name)
                if len(results) > 1:
                    target = target / f"step{step}"
                files = _unpack(path, target)
                entry["files"].extend(str(f.relative_to(self.rd.path)) for f in files)
        self.say(
            site,
            f"run {run}: {len(got['logs'])} log(s), {len(got['results'])} result archive(s)",
            "ready",
        )

    def _app_result(self, coord: _Site) -> Any:
        """Return the app's own result as the coordinator downloaded it: its ``result.json``
        when the app wrote one (parsed), else the names of its result files; None if none."""
        files = [self.rd.path / f for f in self.summary["sites"][coord.name]["files"]]
        for path in files:
            if path.name == "result.json":
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    break
        return {"files": [str(f.relative_to(self.rd.path)) for f in files]} if files else None

    def _stop(self, sites: list[_Site]) -> None:
        if not any(s.started for s in sites):
            return
        with self.phase("stop"):
            for site in sites:
                if not site.started:
                    continue
                try:
                    self.ops.stop(site.client)
                except FedflowError as exc:
                    self.say(site, f"stopping the controller failed: {exc}")


async def run_featurecloud(
    study: Study,
    rundir: RunDirectory,
    *,
    observer: Any = None,
    web_transport: httpx.BaseTransport | None = None,
    controller_transport: httpx.BaseTransport | None = None,
    site_ops: SiteOps | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the study on FeatureCloud; return the run's summary (project id, final status, run
    number, files per site). Writes ``featurecloud.json``, logs and results into ``rundir`` even
    when it fails.

    Raises StudyError for a study FeatureCloud cannot run, PlatformError when the platform or a
    controller refuses (ProjectFailed / ProjectTimeout when the run ends badly; the exception's
    ``summary`` attribute holds what is known), SiteError when a controller cannot be started.
    """
    settings = settings or Settings.from_env()
    ops = site_ops or LocalSiteOps(study)
    loop = asyncio.get_running_loop()

    def notify(kind: str, *args: Any) -> None:
        method = getattr(observer, kind, None) if observer is not None else None
        if callable(method):
            loop.call_soon_threadsafe(method, *args)

    pipeline = _Pipeline(study, rundir, notify, settings, ops, web_transport, controller_transport)
    try:
        return await asyncio.to_thread(pipeline.run)
    except FedflowError as exc:
        exc.summary = json_ready(pipeline.summary)  # type: ignore[attr-defined]
        raise
