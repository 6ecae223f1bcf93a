"""The FeatureCloud.ai web API client (one logged-in user).

    fc = FeatureCloudClient("alice", password, url="https://featurecloud.ai")
    fc.login()
    pid = fc.create_project_for_tool("mean-app")       # buys the app for alice when needed
    token = fc.create_token(pid)["token"]
    bob.join(token)

All requests go through ``PoliteClient`` (rate limit, careful retries, 429/403 handling). On 401
the client refreshes its access token once and repeats the request; a second 401 stops with
PlatformError. The password is kept only for ``login`` and never appears in a repr or a message.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import httpx

from fedflow.errors import PlatformError, Unauthorized
from fedflow.featurecloud._http import Policy, PoliteClient
from fedflow.featurecloud.ratelimit import RateLimiter

__all__ = [
    "DEFAULT_URL",
    "ENDED",
    "FeatureCloudClient",
    "WAITING",
    "list_apps",
    "signup",
]

DEFAULT_URL = "https://featurecloud.ai"
WAITING = frozenset({"init", "ready", "prepare", "running"})
"""Statuses in which a run has not ended yet."""
ENDED = frozenset({"finished", "error", "failed", "stopped"})
"""Statuses in which a run has ended (only ``finished`` is a success)."""

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


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise PlatformError(
            f"{what}: the answer is not JSON (HTTP {response.status_code})"
        ) from None


def _app_table(data: Any, what: str) -> dict[str, int]:
    if not isinstance(data, list) or not all(
        isinstance(a, dict) and "slug" in a and "id" in a for a in data
    ):
        raise PlatformError(f"{what}: unexpected app list (each app needs 'slug' and 'id')")
    return {str(a["slug"]): int(a["id"]) for a in data}


class FeatureCloudClient:
    """One FeatureCloud.ai user's session with the web API."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        url: str = DEFAULT_URL,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.username = username
        self.__password = password
        self.url = url.rstrip("/")
        self.http = PoliteClient(
            self.url, what="FeatureCloud", transport=transport, limiter=limiter, policy=policy
        )
        self._access: str | None = None
        self._refresh: str | None = None
        self._apps: dict[str, int] | None = None

    def __repr__(self) -> str:
        state = "logged in" if self._access else "not logged in"
        return f"FeatureCloudClient(user={self.username!r}, url={self.url!r}, {state})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def __enter__(self) -> FeatureCloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- auth -------------------------------------------------------------------------------------

    def login(self) -> None:
        """Log in and keep the access and refresh tokens. Raises PlatformError when refused."""
        try:
            response = self.http.send(
                "POST",
                "/api/auth/login/",
                json={"username": self.username, "password": self.__password},
            )
        except Unauthorized:
            raise PlatformError(
                f"FeatureCloud refused the login of user '{self.username}' (wrong user name or password?)"
            ) from None
        data = _json(response, "FeatureCloud login")
        if not isinstance(data, dict) or not data.get("access") or not data.get("refresh"):
            raise PlatformError(
                "FeatureCloud login: the answer has no 'access' and 'refresh' tokens"
            )
        self._access, self._refresh = str(data["access"]), str(data["refresh"])

    def refresh(self) -> None:
        """Get a new access token with the refresh token. Raises PlatformError when refused."""
        if not self._refresh:
            raise PlatformError(f"FeatureCloud: user '{self.username}' is not logged in")
        try:
            response = self.http.send(
                "POST", "/api/auth/token/refresh/", json={"refresh": self._refresh}
            )
        except Unauthorized:
            raise PlatformError(
                f"FeatureCloud refused to refresh the session of user '{self.username}'; log in again"
            ) from None
        data = _json(response, "FeatureCloud token refresh")
        if not isinstance(data, dict) or not data.get("access"):
            raise PlatformError("FeatureCloud token refresh: the answer has no 'access' token")
        self._access = str(data["access"])

    def request(self, method: str, path: str, *, json: Any = None) -> Any:
        """Send an authenticated request and return its JSON (None for an empty body).

        On 401 refreshes the access token once and repeats; a second 401 raises PlatformError.
        """
        if self._access is None:
            self.login()
        for attempt in (0, 1):
            try:
                response = self.http.send(
                    method, path, json=json, headers={"Authorization": f"Bearer {self._access}"}
                )
            except Unauthorized as exc:
                if attempt:
                    raise PlatformError(
                        f"FeatureCloud: still not authorised (HTTP 401) after refreshing the session of "
                        f"user '{self.username}' on {method} {path}; stopping"
                    ) from exc
                self.refresh()
                continue
            if not response.content:
                return None
            return _json(response, f"FeatureCloud {method} {path}")
        raise AssertionError("unreachable")

    # -- user and site ---------------------------------------------------------------------------

    def user_info(self) -> Any:
        """Return the user's info (proves the token is valid)."""
        return self.request("GET", "/api/user/info/")

    def site_info(self) -> dict[str, Any]:
        """Return the user's site info (the controller's ``site_info.json``)."""
        data = self.request("GET", "/api/site/")
        if not isinstance(data, dict):
            raise PlatformError("FeatureCloud GET /api/site/: the site info is not a JSON object")
        return data

    def register_site(self, fields: Mapping[str, str]) -> Any:
        """Create the user's site from ``fields`` (every key of SITE_FIELDS; missing ones are '')."""
        unknown = set(fields) - set(SITE_FIELDS)
        if unknown:
            raise PlatformError(f"unknown site field(s): {', '.join(sorted(unknown))}")
        body = {key: str(fields.get(key, "")) for key in SITE_FIELDS}
        return self.request("POST", "/api/site/", json=body)

    # -- apps ------------------------------------------------------------------------------------

    def apps(self) -> dict[str, int]:
        """Return every app on the platform as ``{slug: id}`` (cached for the session)."""
        if self._apps is None:
            self._apps = _app_table(
                self.request("GET", "/api/apps/"), "FeatureCloud GET /api/apps/"
            )
        return self._apps

    def app_id(self, slug: str) -> int:
        """Return the id of the app ``slug``. Raises PlatformError listing the known slugs."""
        table = self.apps()
        if slug not in table:
            raise PlatformError(
                f"FeatureCloud has no app '{slug}' (known: {', '.join(sorted(table)) or 'none'})"
            )
        return table[slug]

    def purchased_apps(self) -> dict[str, int]:
        """Return the apps this user owns as ``{slug: id}``."""
        return _app_table(
            self.request("GET", "/api/apps/purchase/"), "FeatureCloud GET /api/apps/purchase/"
        )

    def purchase_app(self, app_id: int) -> None:
        """Add the app to the user's apps."""
        self.request("POST", f"/api/apps/{int(app_id)}/purchase/")

    def remove_app(self, app_id: int) -> None:
        """Remove the app from the user's apps."""
        self.request("DELETE", f"/api/apps/{int(app_id)}/purchase/")

    def ensure_app(self, slug: str) -> tuple[int, bool]:
        """Make sure the user owns ``slug``; return ``(app id, True if it was bought now)``."""
        app_id = self.app_id(slug)
        if app_id in self.purchased_apps().values():
            return app_id, False
        self.purchase_app(app_id)
        if app_id not in self.purchased_apps().values():
            raise PlatformError(
                f"FeatureCloud: buying app '{slug}' for user '{self.username}' did not take"
            )
        return app_id, True

    # -- projects --------------------------------------------------------------------------------

    def create_project(self, name: str, description: str = "") -> dict[str, Any]:
        """Create an empty project (status ``init``) coordinated by this user; return it."""
        data = self.request(
            "POST", "/api/projects/", json={"name": name, "description": description, "status": ""}
        )
        if not isinstance(data, dict) or "id" not in data:
            raise PlatformError("FeatureCloud POST /api/projects/: the new project has no 'id'")
        return data

    def project(self, project_id: int) -> dict[str, Any]:
        """Return the project (with ``status`` and this user's ``role``)."""
        data = self.request("GET", f"/api/projects/{int(project_id)}/")
        if not isinstance(data, dict) or "status" not in data:
            raise PlatformError(f"FeatureCloud: project {project_id} has no 'status'")
        return data

    def status(self, project_id: int) -> str:
        """Return the project's status."""
        return str(self.project(project_id)["status"])

    def is_coordinator(self, project_id: int) -> bool:
        """True when this user coordinates the project."""
        return self.project(project_id).get("role") == "coordinator"

    def set_workflow(self, project: Mapping[str, Any], app_id: int) -> dict[str, Any]:
        """Put the one-app workflow on ``project`` and set it ``ready``; return the project."""
        pid = int(project["id"])
        body = {
            "id": pid,
            "name": project.get("name", ""),
            "description": project.get("description", ""),
            "status": "ready",
            "workflow": [
                {
                    "id": 0,
                    "projectId": pid,
                    "federatedApp": {"id": int(app_id)},
                    "order": 0,
                    "versionCertificationLevel": 1,
                }
            ],
        }
        return self.request("PUT", f"/api/projects/{pid}/", json=body)

    def set_status(self, project_id: int, status: str) -> dict[str, Any]:
        """Set the project's status (``prepare``, ``shutdown``, ``ready``); return the project."""
        return self.request("PUT", f"/api/projects/{int(project_id)}/", json={"status": status})

    def create_project_for_tool(self, slug: str) -> int:
        """Create a ready project running ``slug`` (buying the app when needed); return its id."""
        app_id, _ = self.ensure_app(slug)
        project = self.create_project(
            f"fedflow-{slug}-{secrets.token_hex(4)}", "created by fedflow"
        )
        self.set_workflow(project, app_id)
        return int(project["id"])

    def create_token(self, project_id: int) -> dict[str, Any]:
        """Create one participant token; return the token object (``token``, ``project`` …)."""
        data = self.request(
            "POST", f"/api/project-tokens/{int(project_id)}/", json={"cmd": "create"}
        )
        if not isinstance(data, dict) or not data.get("token"):
            raise PlatformError(
                f"FeatureCloud: the new token of project {project_id} has no 'token'"
            )
        return data

    def join(self, token: str) -> Any:
        """Join the project the participant ``token`` belongs to; return the platform's answer."""
        return self.request("POST", "/api/project-tokens/", json={"token": token, "cmd": "join"})


def list_apps(
    *,
    url: str = DEFAULT_URL,
    transport: httpx.BaseTransport | None = None,
    policy: Policy | None = None,
) -> dict[str, int]:
    """Return every app on the platform as ``{slug: id}`` (no login needed)."""
    with PoliteClient(url, what="FeatureCloud", transport=transport, policy=policy) as http:
        response = http.send("GET", "/api/apps/")
        return _app_table(
            _json(response, "FeatureCloud GET /api/apps/"), "FeatureCloud GET /api/apps/"
        )


def signup(
    fields: Mapping[str, str],
    *,
    url: str = DEFAULT_URL,
    transport: httpx.BaseTransport | None = None,
    policy: Policy | None = None,
) -> Any:
    """Create an account (``email``, ``password``, ``firstName``, ``lastName``, ``role``)."""
    keys = ("email", "password", "firstName", "lastName", "role")
    body = {key: str(fields[key]) for key in keys}
    with PoliteClient(url, what="FeatureCloud", transport=transport, policy=policy) as http:
        response = http.send("POST", "/api/auth/user/signup/", json=body)
        return _json(response, "FeatureCloud signup") if response.content else None
