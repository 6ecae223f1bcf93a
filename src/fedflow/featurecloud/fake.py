"""Fake FeatureCloud servers for tests and for trying fedflow by hand: a web API and a controller.

They follow ``featurecloud-api.md`` strictly and fail loudly (400/403/404 with a ``detail``
message) wherever the contract says nothing, rather than guess kindly:

- web API: login with bearer access tokens that expire (``access_ttl``) and a refresh endpoint;
  roles (only the coordinator creates tokens and sets ``prepare``, ``shutdown``, ``ready``);
  the status machine ``init → ready → prepare → running → finished | failed``, ``shutdown`` →
  ``stopped``, reset to ``ready`` from an ended run; one-use participant tokens; apps must be
  bought before a project may use them; a per-user rate limit answered with 429 + Retry-After.
- controller: uploads only while the project is in ``prepare`` and before this participant has
  finalized; finalizing tells the web API (through fake-only endpoints under ``/api/fake/``,
  authenticated by the ``controllerKey`` of the site info); when every participant has
  finalized the run starts, lasts ``run_seconds`` and ends with a log and a result zip per step.

The "app" is real and simple: for ``mean-app`` every controller reads the numbers in its
uploaded files (commas, semicolons, whitespace; a non-numeric first line is a header) and sends
only their sum and count; the run's result is the mean over all sites. Any other app makes the run
fail with a log line saying it is not simulated. Faults can be injected for tests (``inject``).

By hand::

    python -m fedflow.featurecloud.fake web --port 8080 --user alice:pw1 --user bob:pw2
    python -m fedflow.featurecloud.fake controller --port 8001 --web http://127.0.0.1:8080 \\
        --data-dir /tmp/fc-alice
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import secrets
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = [
    "APPS",
    "FakeClock",
    "FakeController",
    "FakeSiteOps",
    "FakeWeb",
    "HTTPFail",
    "main",
    "parse_numbers",
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


class FakeClock:
    """A clock that only moves when told to (``sleep`` advances it); thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` and record the call."""
        with self._lock:
            self.slept.append(seconds)
            self._now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Advance the clock without recording a sleep."""
        with self._lock:
            self._now += seconds


class HTTPFail(Exception):
    """Answer the current request with ``status`` and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass
class Request:
    """One request as a handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client: str

    def json(self) -> Any:
        """Return the JSON body. Raises HTTPFail(400) when it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HTTPFail(400, "request body is not JSON") from None

    def json_object(
        self, required: tuple[str, ...] = (), allowed: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """Return the JSON body as an object with ``required`` keys (and only ``allowed`` ones)."""
        data = self.json()
        if not isinstance(data, dict):
            raise HTTPFail(400, "request body must be a JSON object")
        missing = [k for k in required if k not in data]
        if missing:
            raise HTTPFail(400, f"missing key(s): {', '.join(missing)}")
        if allowed is not None:
            extra = sorted(set(data) - set(allowed))
            if extra:
                raise HTTPFail(400, f"unexpected key(s): {', '.join(extra)}")
        return data


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode("utf-8"))


@dataclass
class _Fault:
    method: str | None
    prefix: str
    status: int
    times: int
    headers: dict[str, str]
    detail: str


Handler = Callable[[Request, "re.Match[str]"], Response]


class _Server:
    """A ThreadingHTTPServer on a loopback port, with a route table and fault injection."""

    name = "fake"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults: list[_Fault] = []
        self.seen: list[dict[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._flock = threading.Lock()

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern + r"\Z"), handler))

    @property
    def url(self) -> str:
        """The server's base URL (after ``start``)."""
        if self._httpd is None:
            raise RuntimeError(f"{self.name} server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        """Start serving in a daemon thread; return the base URL."""
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            server_version = "FakeFeatureCloud/1.0"

            def _serve(self) -> None:
                server._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.05),
            name=f"{self.name}-server",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket (safe to call twice)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (for by-hand use)."""
        self.start()
        print(f"{self.name} listening on {self.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def inject(
        self,
        prefix: str,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        detail: str = "injected fault",
    ) -> None:
        """Answer the next ``times`` requests whose path starts with ``prefix`` with ``status``."""
        with self._flock:
            self.faults.append(_Fault(method, prefix, status, times, dict(headers or {}), detail))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._flock:
            for fault in self.faults:
                if (
                    fault.times > 0
                    and path.startswith(fault.prefix)
                    and fault.method in (None, method)
                ):
                    fault.times -= 1
                    return fault
        return None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if h.headers.get("Transfer-Encoding") or length < 0:
            response = _json_response({"detail": "send a body with Content-Length"}, 400)
            body = b""
        else:
            body = h.rfile.read(length) if length else b""
            response = self._dispatch(h, split.path, split.query, body)
        h.send_response(response.status)
        h.send_header("Content-Type", response.content_type)
        h.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(response.body)

    def _dispatch(
        self, h: BaseHTTPRequestHandler, path: str, raw_query: str, body: bytes
    ) -> Response:
        method = h.command
        self.seen.append(
            {"method": method, "path": path, "user_agent": h.headers.get("User-Agent", "")}
        )
        fault = self._take_fault(method, path)
        if fault is not None:
            return Response(
                fault.status, json.dumps({"detail": fault.detail}).encode(), headers=fault.headers
            )
        parsed = parse_qs(raw_query, keep_blank_values=True)
        repeated = [k for k, v in parsed.items() if len(v) > 1]
        if repeated:
            return _json_response({"detail": f"query parameter given twice: {repeated[0]}"}, 400)
        request = Request(
            method=method,
            path=path,
            query={k: v[0] for k, v in parsed.items()},
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            client=h.client_address[0],
        )
        allowed_methods = []
        for route_method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method != method:
                allowed_methods.append(route_method)
                continue
            try:
                return handler(request, match)
            except HTTPFail as exc:
                return Response(
                    exc.status, json.dumps({"detail": exc.detail}).encode(), headers=exc.headers
                )
            except Exception as exc:  # a bug in the fake: say so loudly
                return _json_response(
                    {"detail": f"fake server error: {type(exc).__name__}: {exc}"}, 500
                )
        if allowed_methods:
            return _json_response({"detail": f"method {method} not allowed on {path}"}, 405)
        return _json_response({"detail": f"no such endpoint: {method} {path}"}, 404)


# -- the web API ----------------------------------------------------------------------------------


@dataclass
class _User:
    username: str
    password: str
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    role: str = "user"
    site: dict[str, Any] | None = None
    purchased: set[int] = field(default_factory=set)


@dataclass
class _Run:
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
class _Project:
    id: int
    name: str
    description: str
    coordinator: str
    status: str = "init"
    participants: list[str] = field(default_factory=list)
    workflow: list[dict[str, Any]] = field(default_factory=list)
    finalized: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[_Run] = field(default_factory=list)


def _iso(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class FakeWeb(_Server):
    """The fake FeatureCloud.ai web API. ``users`` maps user names to passwords; each gets a site.

    ``rate_limit``: requests per second and user (or client address) before 429 (None: off).
    ``run_seconds``: how long a run stays ``running``. ``clock``: time source for token expiry,
    runs and the rate limit (tests pass a FakeClock shared with the client).
    """

    name = "fake FeatureCloud web API"

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: float | None = 5.0,
        retry_after: int = 1,
        run_seconds: float = 0.5,
        access_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        with_sites: bool = True,
    ) -> None:
        super().__init__(host, port)
        self.clock = clock
        self.rate_limit = rate_limit
        self.retry_after = retry_after
        self.run_seconds = run_seconds
        self.access_ttl = access_ttl
        self.users: dict[str, _User] = {}
        self.projects: dict[int, _Project] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, str] = {}
        self._site_keys: dict[str, str] = {}
        self._hits: dict[str, list[float]] = {}
        self._lock = threading.RLock()
        self._next_project = 1
        self._next_token = 1
        self._next_site = 1
        for username, password in (users or {}).items():
            self.add_user(username, password, with_site=with_sites)
        r = self.route
        r("POST", r"/api/auth/login/", self._login)
        r("POST", r"/api/auth/token/refresh/", self._refresh_token)
        r("POST", r"/api/auth/user/signup/", self._signup)
        r("GET", r"/api/user/info/", self._user_info)
        r("GET", r"/api/site/", self._get_site)
        r("POST", r"/api/site/", self._post_site)
        r("GET", r"/api/apps/", self._apps)
        r("GET", r"/api/apps/purchase/", self._purchased)
        r("POST", r"/api/apps/(\d+)/purchase/", self._purchase)
        r("DELETE", r"/api/apps/(\d+)/purchase/", self._unpurchase)
        r("POST", r"/api/projects/", self._create_project)
        r("GET", r"/api/projects/(\d+)/", self._get_project)
        r("PUT", r"/api/projects/(\d+)/", self._put_project)
        r("POST", r"/api/project-tokens/(\d+)/", self._create_token)
        r("POST", r"/api/project-tokens/", self._join)
        r("GET", r"/api/fake/controller/project/(\d+)/", self._ctl_project)
        r("POST", r"/api/fake/controller/finalize/(\d+)/", self._ctl_finalize)
        r("GET", r"/api/fake/controller/runs/(\d+)/", self._ctl_runs)

    # -- test helpers ----------------------------------------------------------------------------

    def add_user(self, username: str, password: str, *, with_site: bool = True) -> None:
        """Create an account (and its site)."""
        with self._lock:
            self.users[username] = _User(username, password, email=f"{username}@example.org")
            if with_site:
                self._make_site(self.users[username], {"name": f"{username}-site"})

    def expire_access_tokens(self) -> None:
        """Invalidate every access token (the next request gets 401; refresh still works)."""
        with self._lock:
            self._access.clear()

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every refresh token too (refreshing gets 401)."""
        with self._lock:
            self._refresh.clear()

    def project_status(self, project_id: int) -> str:
        """Return a project's status as the platform sees it now."""
        with self._lock:
            project = self.projects[project_id]
            self._advance(project)
            return project.status

    # -- helpers ---------------------------------------------------------------------------------

    def _make_site(self, user: _User, fields: dict[str, Any]) -> None:
        key = secrets.token_hex(16)
        user.site = {"id": self._next_site, **{k: str(fields.get(k, "")) for k in SITE_FIELDS}}
        user.site["username"] = user.username
        user.site["controllerKey"] = key
        self._site_keys[key] = user.username
        self._next_site += 1

    def _limit(self, who: str) -> None:
        if self.rate_limit is None:
            return
        now = self.clock()
        hits = [t for t in self._hits.get(who, []) if now - t < 1.0]
        if len(hits) >= self.rate_limit:
            self._hits[who] = hits
            raise HTTPFail(429, "Request was throttled.", {"Retry-After": str(self.retry_after)})
        hits.append(now)
        self._hits[who] = hits

    def _user(self, req: Request) -> _User:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            self._limit(req.client)
            raise HTTPFail(401, "Authentication credentials were not provided.")
        token = auth[len("Bearer ") :]
        entry = self._access.get(token)
        if entry is None or entry[1] <= self.clock():
            self._limit(req.client)
            raise HTTPFail(401, "Given token not valid for any token type")
        self._limit(entry[0])
        return self.users[entry[0]]

    def _site_user(self, req: Request) -> _User:
        key = req.headers.get(SITE_KEY_HEADER.lower(), "")
        username = self._site_keys.get(key)
        if username is None:
            raise HTTPFail(401, "unknown controller key (is site_info.json this site's?)")
        return self.users[username]

    def _project(self, pid: str, user: _User) -> _Project:
        project = self.projects.get(int(pid))
        if project is None:
            raise HTTPFail(404, f"project {pid} not found")
        if user.username not in project.participants:
            raise HTTPFail(403, f"user '{user.username}' is not a member of project {pid}")
        self._advance(project)
        return project

    def _advance(self, project: _Project) -> None:
        if project.status == "running" and project.runs:
            run = project.runs[-1]
            if self.clock() >= run.ends_at:
                run.status = project.status = run.outcome
                for lines in run.logs.values():
                    lines.append(f"run {run.nr} {run.outcome}")

    def _project_json(self, project: _Project, user: _User) -> dict[str, Any]:
        return {
            "id": project.id,
            "name": project.name,
            "description": project.description,
            "status": project.status,
            "role": "coordinator" if user.username == project.coordinator else "participant",
            "workflow": project.workflow,
            "participants": len(project.participants),
        }

    def _slug(self, project: _Project) -> str | None:
        if not project.workflow:
            return None
        app_id = project.workflow[0]["federatedApp"]["id"]
        return next(a["slug"] for a in APPS if a["id"] == app_id)

    # -- auth ------------------------------------------------------------------------------------

    def _login(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            self._limit(req.client)
            body = req.json_object(("username", "password"), ("username", "password"))
            user = self.users.get(str(body["username"]))
            if user is None or user.password != body["password"]:
                raise HTTPFail(401, "No active account found with the given credentials")
            access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            self._access[access] = (user.username, self.clock() + self.access_ttl)
            self._refresh[refresh] = user.username
            return _json_response({"access": access, "refresh": refresh})

    def _refresh_token(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            self._limit(req.client)
            body = req.json_object(("refresh",), ("refresh",))
            username = self._refresh.get(str(body["refresh"]))
            if username is None:
                raise HTTPFail(401, "Token is invalid or expired")
            access = secrets.token_urlsafe(24)
            self._access[access] = (username, self.clock() + self.access_ttl)
            return _json_response({"access": access})

    def _signup(self, req: Request, m: re.Match[str]) -> Response:
        keys = ("email", "password", "firstName", "lastName", "role")
        with self._lock:
            self._limit(req.client)
            body = req.json_object(keys, keys)
            email = str(body["email"])
            if "@" not in email:
                raise HTTPFail(400, "email: enter a valid email address")
            if email in self.users:
                raise HTTPFail(400, "email: a user with this email already exists")
            if len(str(body["password"])) < 8:
                raise HTTPFail(400, "password: at least 8 characters")
            user = _User(
                email,
                str(body["password"]),
                email,
                str(body["firstName"]),
                str(body["lastName"]),
                str(body["role"]),
            )
            self.users[email] = user
            return _json_response(
                {"email": email, "firstName": user.first_name, "lastName": user.last_name}, 201
            )

    def _user_info(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            return _json_response(
                {"username": user.username, "email": user.email, "role": user.role}
            )

    def _get_site(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            if user.site is None:
                raise HTTPFail(404, f"user '{user.username}' has no site; register one first")
            return _json_response(user.site)

    def _post_site(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            body = req.json_object(SITE_FIELDS, SITE_FIELDS)
            if user.site is not None:
                raise HTTPFail(400, f"user '{user.username}' already has a site")
            if not str(body["name"]).strip():
                raise HTTPFail(400, "name: this field may not be blank")
            self._make_site(user, body)
            return _json_response(user.site, 201)

    # -- apps ------------------------------------------------------------------------------------

    def _apps(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            self._limit(req.client)
            return _json_response(APPS)

    def _purchased(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            return _json_response([a for a in APPS if a["id"] in user.purchased])

    def _app(self, app_id: str) -> dict[str, Any]:
        app = next((a for a in APPS if a["id"] == int(app_id)), None)
        if app is None:
            raise HTTPFail(404, f"app {app_id} not found")
        return app

    def _purchase(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            app = self._app(m.group(1))
            user.purchased.add(app["id"])
            return _json_response(app, 201)

    def _unpurchase(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            app = self._app(m.group(1))
            if app["id"] not in user.purchased:
                raise HTTPFail(404, f"app '{app['slug']}' is not among the user's apps")
            user.purchased.discard(app["id"])
            return Response(204)

    # -- projects --------------------------------------------------------------------------------

    def _create_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            body = req.json_object(
                ("name", "description", "status"), ("name", "description", "status")
            )
            if body["status"] not in ("", "init"):
                raise HTTPFail(400, "a new project starts in status 'init'")
            project = _Project(
                self._next_project, str(body["name"]), str(body["description"]), user.username
            )
            project.participants.append(user.username)
            self.projects[project.id] = project
            self._next_project += 1
            return _json_response(self._project_json(project, user), 201)

    def _get_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            project = self._project(m.group(1), user)
            return _json_response(self._project_json(project, user))

    def _put_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            project = self._project(m.group(1), user)
            if user.username != project.coordinator:
                raise HTTPFail(403, f"only the coordinator may change project {project.id}")
            body = req.json_object(("status",))
            if "workflow" in body:
                self._put_workflow(project, user, body)
            else:
                if set(body) != {"status"}:
                    raise HTTPFail(
                        400, "send either a whole project with a workflow or just {'status'}"
                    )
                self._set_status(project, str(body["status"]))
            return _json_response(self._project_json(project, user))

    def _put_workflow(self, project: _Project, user: _User, body: dict[str, Any]) -> None:
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
                raise HTTPFail(
                    400, f"workflow[{i}] needs exactly the keys {', '.join(sorted(keys))}"
                )
            if step["projectId"] != project.id:
                raise HTTPFail(400, f"workflow[{i}].projectId does not match project {project.id}")
            app_ref = step["federatedApp"]
            if not isinstance(app_ref, dict) or not isinstance(app_ref.get("id"), int):
                raise HTTPFail(400, f"workflow[{i}].federatedApp needs an integer 'id'")
            app = self._app(str(app_ref["id"]))
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

    def _set_status(self, project: _Project, status: str) -> None:
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

    def _create_token(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            project = self._project(m.group(1), user)
            body = req.json_object(("cmd",), ("cmd",))
            if body["cmd"] != "create":
                raise HTTPFail(400, f"unknown cmd {body['cmd']!r} (expected 'create')")
            if user.username != project.coordinator:
                raise HTTPFail(
                    403, f"only the coordinator may create tokens for project {project.id}"
                )
            token: dict[str, Any] = {
                "id": self._next_token,
                "token": secrets.token_urlsafe(16),
                "project": project.id,
                "used": False,
            }
            self._next_token += 1
            self.tokens[token["token"]] = token
            return _json_response(token, 201)

    def _join(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            body = req.json_object(("token", "cmd"), ("token", "cmd"))
            if body["cmd"] != "join":
                raise HTTPFail(400, f"unknown cmd {body['cmd']!r} (expected 'join')")
            token = self.tokens.get(str(body["token"]))
            if token is None:
                raise HTTPFail(404, "token not found")
            if token["used"]:
                raise HTTPFail(400, "this token has already been used")
            project = self.projects[token["project"]]
            if user.username in project.participants:
                raise HTTPFail(
                    400, f"user '{user.username}' is already a member of project {project.id}"
                )
            self._advance(project)
            if project.status not in ("init", "ready"):
                raise HTTPFail(
                    400, f"project {project.id} is '{project.status}'; join it before 'prepare'"
                )
            token["used"] = True
            project.participants.append(user.username)
            return _json_response({**token, "project": project.id})

    # -- fake-only endpoints for the fake controller ---------------------------------------------

    def _ctl_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._site_user(req)
            project = self._project(m.group(1), user)
            return _json_response(
                {
                    "status": project.status,
                    "app": self._slug(project),
                    "finalized": user.username in project.finalized,
                    "username": user.username,
                }
            )

    def _ctl_finalize(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._site_user(req)
            project = self._project(m.group(1), user)
            body = req.json_object(("files", "summary"), ("files", "summary"))
            if project.status != "prepare":
                raise HTTPFail(
                    400,
                    f"project {project.id} is '{project.status}'; contributions are finalized in 'prepare'",
                )
            if user.username in project.finalized:
                raise HTTPFail(
                    400, f"user '{user.username}' has already finalized project {project.id}"
                )
            project.finalized[user.username] = {"files": body["files"], "summary": body["summary"]}
            if set(project.finalized) >= set(project.participants):
                self._start_run(project)
            return _json_response(
                {
                    "finalized": True,
                    "waiting_for": len(set(project.participants) - set(project.finalized)),
                }
            )

    def _start_run(self, project: _Project) -> None:
        now = self.clock()
        run = _Run(len(project.runs) + 1, now, _iso(), now + self.run_seconds, "finished")
        slug = self._slug(project)
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
                lines.append(
                    f"error: the fake platform does not simulate app '{slug}' (only mean-app)"
                )
        elif errors:
            run.outcome = "failed"
            for username, lines in run.logs.items():
                for who, message in errors.items():
                    lines.append(
                        f"error at this site: {message}"
                        if who == username
                        else "error at another site"
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

    def _ctl_runs(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._site_user(req)
            project = self._project(m.group(1), user)
            out = []
            for run in reversed(project.runs):
                if user.username not in run.logs:
                    continue
                done = run.status == "finished"
                out.append(
                    {
                        "runNr": run.nr,
                        "startedOn": run.started_on,
                        "status": run.status,
                        "log": list(run.logs[user.username]),
                        "result": {**run.result, "local": run.local.get(user.username)}
                        if done and run.result
                        else None,
                    }
                )
            return _json_response(out)


# -- the controller -------------------------------------------------------------------------------


_SPLIT = re.compile(r"[\s,;]+")


def parse_numbers(text: str, name: str = "file") -> list[float]:
    """Return the numbers in ``text`` (separated by commas, semicolons or whitespace).

    A first line without any number is a header and skipped. Raises ValueError naming the file,
    line and token when something else is not a number.
    """
    numbers: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = [t for t in _SPLIT.split(line.strip()) if t]
        values = []
        for token in tokens:
            try:
                value = float(token)
            except ValueError:
                value = None
            values.append((token, value))
        if number == 1 and values and all(v is None for _, v in values):
            continue
        for token, value in values:
            if value is None or not math.isfinite(value):
                raise ValueError(f"{name}, line {number}: {token!r} is not a number")
            numbers.append(value)
    return numbers


class FakeController(_Server):
    """A fake local controller for one site. ``data_dir`` must hold the site's ``site_info.json``."""

    name = "fake FeatureCloud controller"

    def __init__(
        self,
        web_url: str,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        web_transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(host, port)
        self.web_url = web_url.rstrip("/")
        self.data_dir = Path(data_dir)
        self._web = httpx.Client(base_url=self.web_url, transport=web_transport, timeout=30)
        self._lock = threading.Lock()
        r = self.route
        r("GET", r"/ping/", lambda req, m: _json_response({"status": "running"}))
        r("POST", r"/file-upload/", self._upload)
        r("GET", r"/project-runs/", self._runs)
        r("GET", r"/logs-download/", self._log)
        r("GET", r"/file-download/", self._result)

    def stop(self) -> None:
        super().stop()
        self._web.close()

    def _key(self) -> str:
        info = self.data_dir / "site_info.json"
        try:
            data = json.loads(info.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HTTPFail(
                400, f"no site_info.json in {self.data_dir}: save GET /api/site/ there first"
            ) from None
        except ValueError:
            raise HTTPFail(400, f"{info} is not JSON") from None
        if not isinstance(data, dict) or "controllerKey" not in data:
            raise HTTPFail(400, f"{info} is not a FeatureCloud site info")
        return str(data["controllerKey"])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._web.request(
                method, path, json=body, headers={SITE_KEY_HEADER: self._key()}
            )
        except httpx.HTTPError as exc:
            raise HTTPFail(
                502,
                f"the controller cannot reach FeatureCloud at {self.web_url} ({type(exc).__name__})",
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise HTTPFail(response.status_code, str(detail))
        return response.json()

    @staticmethod
    def _pid(req: Request) -> int:
        raw = req.query.get("projectId")
        if raw is None or not raw.isdigit():
            raise HTTPFail(400, "query parameter projectId must be a project number")
        return int(raw)

    def _pending(self, pid: int) -> Path:
        return self.data_dir / "uploads" / f"Project_{pid}" / "pending"

    def _upload(self, req: Request, m: re.Match[str]) -> Response:
        expected = {"projectId", "fileName", "finalize", "consent"}
        if set(req.query) != expected:
            raise HTTPFail(
                400, f"file-upload needs exactly the query parameters {', '.join(sorted(expected))}"
            )
        pid = self._pid(req)
        finalize = req.query["finalize"]
        if finalize not in ("", "true"):
            raise HTTPFail(400, f"finalize must be '' or 'true' (got {finalize!r})")
        with self._lock:
            state = self._call("GET", f"/api/fake/controller/project/{pid}/")
            if state["status"] != "prepare":
                raise HTTPFail(
                    400,
                    f"project {pid} is '{state['status']}'; data can be contributed only in 'prepare'",
                )
            if state["finalized"]:
                raise HTTPFail(
                    400, f"this site has already finalized its contribution to project {pid}"
                )
            pending = self._pending(pid)
            if finalize == "true":
                if req.query["fileName"] or req.body:
                    raise HTTPFail(
                        400, "a finalize request has an empty fileName and an empty body"
                    )
                return self._finalize(pid, state, pending)
            name = req.query["fileName"]
            if not name or name != Path(name).name or name in (".", ".."):
                raise HTTPFail(400, f"fileName must be a plain file name (got {name!r})")
            pending.mkdir(parents=True, exist_ok=True)
            (pending / name).write_bytes(req.body)
            return _json_response({"fileName": name, "size": len(req.body)})

    def _finalize(self, pid: int, state: dict[str, Any], pending: Path) -> Response:
        files = sorted(pending.iterdir()) if pending.is_dir() else []
        if not files:
            raise HTTPFail(
                400, f"nothing uploaded for project {pid}; upload files before finalizing"
            )
        summary: dict[str, Any]
        if state["app"] == "mean-app":
            try:
                numbers = [
                    x for f in files for x in parse_numbers(f.read_text(encoding="utf-8"), f.name)
                ]
                summary = {"sum": math.fsum(numbers), "count": len(numbers)}
            except (ValueError, UnicodeDecodeError) as exc:
                summary = {"error": str(exc)}
        else:
            summary = {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
        answer = self._call(
            "POST",
            f"/api/fake/controller/finalize/{pid}/",
            {"files": [f.name for f in files], "summary": summary},
        )
        done = pending.parent / f"contribution_{time.time_ns()}"
        pending.rename(done)
        return _json_response(answer)

    def _run_dir(self, pid: int, run: int) -> Path:
        return self.data_dir / "workflows" / f"Project_{pid}" / f"Run_{run}"

    def _runs(self, req: Request, m: re.Match[str]) -> Response:
        if set(req.query) != {"projectId"}:
            raise HTTPFail(400, "project-runs needs exactly the query parameter projectId")
        pid = self._pid(req)
        with self._lock:
            runs = self._call("GET", f"/api/fake/controller/runs/{pid}/")
            out = []
            for run in runs:
                nr = int(run["runNr"])
                folder = self._run_dir(pid, nr)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"logs_pr{pid}_run{nr}_step1.txt").write_text(
                    "\n".join(run["log"]) + "\n", encoding="utf-8"
                )
                zip_path = folder / f"results_pr{pid}_run{nr}_step1.zip"
                if run["result"] is not None and not zip_path.exists():
                    buffer = io.BytesIO()
                    with zipfile.ZipFile(buffer, "w") as archive:
                        archive.writestr("result.json", json.dumps(run["result"], indent=2) + "\n")
                        archive.writestr("mean.txt", f"{run['result']['mean']!r}\n")
                    zip_path.write_bytes(buffer.getvalue())
                out.append(
                    {
                        "runNr": nr,
                        "startedOn": run["startedOn"],
                        "status": run["status"],
                        "logSteps": [1],
                        "resultSteps": [1] if zip_path.exists() else [],
                    }
                )
            return _json_response(out)

    def _step_file(self, req: Request, kind: str) -> Path:
        if set(req.query) != {"projectId", "run", "step"}:
            raise HTTPFail(400, "needs exactly the query parameters projectId, run, step")
        pid = self._pid(req)
        run, step = req.query["run"], req.query["step"]
        if not run.isdigit() or not step.isdigit():
            raise HTTPFail(400, "run and step must be numbers")
        name = (
            f"logs_pr{pid}_run{run}_step{step}.txt"
            if kind == "log"
            else f"results_pr{pid}_run{run}_step{step}.zip"
        )
        path = self._run_dir(pid, int(run)) / name
        if not path.is_file():
            raise HTTPFail(404, f"no {kind} for project {pid}, run {run}, step {step}")
        return path

    def _log(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, self._step_file(req, "log").read_bytes(), "text/plain; charset=utf-8")

    def _result(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, self._step_file(req, "result").read_bytes(), "application/zip")


class FakeSiteOps:
    """Site operations for tests: each site gets its own fake controller on a loopback port."""

    def __init__(self, web_url: str) -> None:
        self.web_url = web_url
        self.controllers: dict[str, FakeController] = {}
        self.stopped: list[str] = []

    def start(self, site: Any, data_dir: Path) -> str:
        """Start a fake controller for ``site`` on ``data_dir``; return its URL."""
        controller = FakeController(self.web_url, data_dir)
        self.controllers[site.name] = controller
        return controller.start()

    def stop(self, site: Any) -> None:
        """Stop the site's fake controller."""
        controller = self.controllers.pop(site.name, None)
        if controller is not None:
            controller.stop()
            self.stopped.append(site.name)


def _users_from(args: argparse.Namespace) -> dict[str, str]:
    users: dict[str, str] = {}
    if args.env:
        from fedflow.study.env import load_credentials

        users.update(load_credentials(args.env))
    for entry in args.user or []:
        name, sep, password = entry.partition(":")
        if not sep or not name:
            raise SystemExit(f"--user {entry.split(':')[0]}…: expected NAME:PASSWORD")
        users[name] = password
    return users


def main(argv: list[str] | None = None) -> int:
    """Serve a fake web API or a fake controller until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m fedflow.featurecloud.fake", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="what", required=True)
    web = sub.add_parser("web", help="serve the fake web API")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument(
        "--user", action="append", metavar="NAME:PASSWORD", help="an account (repeatable)"
    )
    web.add_argument("--env", metavar="FILE", help="read accounts from a USER=PASSWORD file")
    web.add_argument(
        "--rate-limit", type=float, default=5.0, help="requests/s per user before 429 (0: off)"
    )
    web.add_argument(
        "--run-seconds", type=float, default=2.0, help="how long a run stays 'running'"
    )
    ctl = sub.add_parser("controller", help="serve a fake controller for one site")
    ctl.add_argument("--host", default="127.0.0.1")
    ctl.add_argument("--port", type=int, default=8000)
    ctl.add_argument("--web", required=True, metavar="URL", help="the (fake) web API's URL")
    ctl.add_argument(
        "--data-dir", required=True, metavar="DIR", help="holds site_info.json, uploads, workflows"
    )
    args = parser.parse_args(argv)
    server: _Server
    if args.what == "web":
        server = FakeWeb(
            _users_from(args),
            host=args.host,
            port=args.port,
            rate_limit=args.rate_limit or None,
            run_seconds=args.run_seconds,
        )
    else:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        server = FakeController(args.web, args.data_dir, host=args.host, port=args.port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
