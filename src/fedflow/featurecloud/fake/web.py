"""The fake FeatureCloud.ai web API: accounts and sites, apps, projects, tokens, and the
fake-only endpoints (``/api/fake/controller/...``) through which a fake controller finalizes."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from fedflow.featurecloud.fake.server import FakeServer, HTTPFail, Request, Response, json_response
from fedflow.featurecloud.fake.state import (
    APPS,
    SITE_FIELDS,
    SITE_KEY_HEADER,
    Project,
    User,
    advance,
    app_by_id,
    app_slug,
    project_json,
    put_workflow,
    set_status,
    start_run,
)

__all__ = ["FakeWeb"]


class FakeWeb(FakeServer):
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
        self.users: dict[str, User] = {}
        self.projects: dict[int, Project] = {}
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
            self.users[username] = User(username, password, email=f"{username}@example.org")
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
            advance(project, self.clock())
            return project.status

    # -- helpers ---------------------------------------------------------------------------------

    def _make_site(self, user: User, fields: dict[str, Any]) -> None:
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

    def _user(self, req: Request) -> User:
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

    def _site_user(self, req: Request) -> User:
        key = req.headers.get(SITE_KEY_HEADER.lower(), "")
        username = self._site_keys.get(key)
        if username is None:
            raise HTTPFail(401, "unknown controller key (is site_info.json this site's?)")
        return self.users[username]

    def _project(self, pid: str, user: User) -> Project:
        project = self.projects.get(int(pid))
        if project is None:
            raise HTTPFail(404, f"project {pid} not found")
        if user.username not in project.participants:
            raise HTTPFail(403, f"user '{user.username}' is not a member of project {pid}")
        advance(project, self.clock())
        return project

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
            return json_response({"access": access, "refresh": refresh})

    def _refresh_token(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            self._limit(req.client)
            body = req.json_object(("refresh",), ("refresh",))
            username = self._refresh.get(str(body["refresh"]))
            if username is None:
                raise HTTPFail(401, "Token is invalid or expired")
            access = secrets.token_urlsafe(24)
            self._access[access] = (username, self.clock() + self.access_ttl)
            return json_response({"access": access})

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
            user = User(
                email,
                str(body["password"]),
                email,
                str(body["firstName"]),
                str(body["lastName"]),
                str(body["role"]),
            )
            self.users[email] = user
            return json_response(
                {"email": email, "firstName": user.first_name, "lastName": user.last_name}, 201
            )

    def _user_info(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            return json_response(
                {"username": user.username, "email": user.email, "role": user.role}
            )

    def _get_site(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            if user.site is None:
                raise HTTPFail(404, f"user '{user.username}' has no site; register one first")
            return json_response(user.site)

    def _post_site(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            body = req.json_object(SITE_FIELDS, SITE_FIELDS)
            if user.site is not None:
                raise HTTPFail(400, f"user '{user.username}' already has a site")
            if not str(body["name"]).strip():
                raise HTTPFail(400, "name: this field may not be blank")
            self._make_site(user, body)
            return json_response(user.site, 201)

    # -- apps ------------------------------------------------------------------------------------

    def _apps(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            self._limit(req.client)
            return json_response(APPS)

    def _purchased(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            return json_response([a for a in APPS if a["id"] in user.purchased])

    def _purchase(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            app = app_by_id(m.group(1))
            user.purchased.add(app["id"])
            return json_response(app, 201)

    def _unpurchase(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            app = app_by_id(m.group(1))
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
            project = Project(
                self._next_project, str(body["name"]), str(body["description"]), user.username
            )
            project.participants.append(user.username)
            self.projects[project.id] = project
            self._next_project += 1
            return json_response(project_json(project, user), 201)

    def _get_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            project = self._project(m.group(1), user)
            return json_response(project_json(project, user))

    def _put_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._user(req)
            project = self._project(m.group(1), user)
            if user.username != project.coordinator:
                raise HTTPFail(403, f"only the coordinator may change project {project.id}")
            body = req.json_object(("status",))
            if "workflow" in body:
                put_workflow(project, user, body)
            else:
                if set(body) != {"status"}:
                    raise HTTPFail(
                        400, "send either a whole project with a workflow or just {'status'}"
                    )
                set_status(project, str(body["status"]))
            return json_response(project_json(project, user))

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
            return json_response(token, 201)

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
            advance(project, self.clock())
            if project.status not in ("init", "ready"):
                raise HTTPFail(
                    400, f"project {project.id} is '{project.status}'; join it before 'prepare'"
                )
            token["used"] = True
            project.participants.append(user.username)
            return json_response({**token, "project": project.id})

    # -- fake-only endpoints for the fake controller ---------------------------------------------

    def _ctl_project(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            user = self._site_user(req)
            project = self._project(m.group(1), user)
            return json_response(
                {
                    "status": project.status,
                    "app": app_slug(project),
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
                start_run(project, self.clock(), self.run_seconds)
            return json_response(
                {
                    "finalized": True,
                    "waiting_for": len(set(project.participants) - set(project.finalized)),
                }
            )

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
            return json_response(out)
