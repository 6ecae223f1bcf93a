"""The fakes' HTTP server runner: a stdlib ThreadingHTTPServer on a loopback port with a route
table, fault injection (``inject``), a record of the requests it saw, and loud failures.

A handler takes a ``Request`` and the route's regex match and returns a ``Response``, or raises
``HTTPFail`` to answer with an error status and ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeServer", "Fault", "HTTPFail", "Handler", "Request", "Response", "json_response"]


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
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    """Return a JSON response."""
    return Response(status, json.dumps(data).encode("utf-8"))


@dataclass
class Fault:
    """An injected fault: the next ``times`` requests under ``prefix`` get ``status``."""

    method: str | None
    prefix: str
    status: int
    times: int
    headers: dict[str, str]
    detail: str


Handler = Callable[[Request, "re.Match[str]"], Response]


class FakeServer:
    """A ThreadingHTTPServer on a loopback port, with a route table and fault injection."""

    name = "fake"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults: list[Fault] = []
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

    def __enter__(self) -> FakeServer:
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
            self.faults.append(Fault(method, prefix, status, times, dict(headers or {}), detail))

    def _take_fault(self, method: str, path: str) -> Fault | None:
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
            response = json_response({"detail": "send a body with Content-Length"}, 400)
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
            return json_response({"detail": f"query parameter given twice: {repeated[0]}"}, 400)
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
                return json_response(
                    {"detail": f"fake server error: {type(exc).__name__}: {exc}"}, 500
                )
        if allowed_methods:
            return json_response({"detail": f"method {method} not allowed on {path}"}, 405)
        return json_response({"detail": f"no such endpoint: {method} {path}"}, 404)
