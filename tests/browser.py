"""A real headless Chromium for the report tests, driven over the DevTools protocol.

Debian's ``chromium`` package is installed with apt-get when missing (as root, once; like
``tests/ssh/sshd.py`` and ``tests/node/postgres.py`` do for their servers). Without it and without
root, ``ensure_chromium`` says why not and the tests skip with that reason. Nothing is downloaded
by a browser installer: the test drives the system's ``/usr/bin/chromium`` with the ``websockets``
package (the ``test`` extra).

``Chromium(path).load(url)`` opens a page in a fresh headless browser and returns what a person
would have seen: the console errors, uncaught exceptions and failed loads, the images with their
place on the page, and a full-page PNG screenshot. The browser reaches nothing but the loopback:
it runs with a proxy on a closed loopback port and without background networking.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.apt import apt_install

__all__ = ["Chromium", "PageLoad", "ensure_chromium"]

_NAMES = ("chromium", "chromium-browser")


def _which() -> str | None:
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> tuple[str | None, str | None]:
    """Return (the chromium executable, None), or (None, why it is not available)."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        return None, "the websockets package is missing (pip install -e '.[test]')"
    why = apt_install("chromium", lambda: _which() is not None)  # with its recommended fonts
    return (None, why) if why is not None else (_which(), None)


@dataclass
class PageLoad:
    """What loading one page showed: ``errors`` (console errors, uncaught exceptions, failed
    loads, one line each), ``images`` (per <img>: id, complete, naturalWidth/Height and its box
    x, y, width, height in page pixels) and the full-page ``screenshot`` (PNG)."""

    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    screenshot: bytes = b""
    title: str = ""


_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect();
  return {id: i.id, complete: i.complete, naturalWidth: i.naturalWidth,
          naturalHeight: i.naturalHeight, x: r.left + window.scrollX, y: r.top + window.scrollY,
          width: r.width, height: r.height};
}))"""


class Chromium:
    """One headless Chromium process with its own throwaway profile; ``close()`` ends it."""

    def __init__(self, executable: str, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="fedflow-chromium-"))
        self.log = (self.profile / "stderr.log").open("wb")
        command = [
            executable,
            "--headless",
            "--no-sandbox",  # the suite runs as root in CI
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-pings",
            "--proxy-server=http://127.0.0.1:9",  # anything not a file:// goes nowhere
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL
        )
        self._id = 0
        self._events: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()
        self.ws: Any = None
        try:
            self.port = self._port()
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.process.returncode}): {self._tail()}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not open its DevTools port: {self._tail()}")

    def _tail(self) -> str:
        self.log.flush()
        text = (self.profile / "stderr.log").read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-3:])

    # -- the DevTools protocol ----------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.sync.client import connect

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        page = next(t for t in targets if t.get("type") == "page")
        # entered as a context manager (websockets 17 deprecates a bare connect()); close() exits it
        self.ws = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        )

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        call_id = self._id
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})
            self._events.append(message)

    def _wait_for(self, event: str) -> None:
        if any(e.get("method") == event for e in self._events):
            return
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            self._events.append(message)
            if message.get("method") == event:
                return

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def _errors(self) -> list[str]:
        errors: list[str] = []
        for event in self._events:
            method, params = event.get("method"), event.get("params") or {}
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                texts = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
                errors.append(f"console.{params['type']}: {' '.join(texts)}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails") or {}
                text = (details.get("exception") or {}).get("description") or details.get("text")
                errors.append(f"uncaught: {text}")
            elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"log: {entry.get('text')} {entry.get('url') or ''}".strip())
        return errors

    def load(self, url: str, *, width: int = 1280, height: int = 900) -> PageLoad:
        """Open ``url``, wait for its load event, and return what it showed (see PageLoad)."""
        if self.ws is None:
            self._connect()
        for domain in ("Runtime", "Log", "Page"):
            self._call(f"{domain}.enable")
        self._call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self._events.clear()
        navigated = self._call("Page.navigate", url=url)
        if navigated.get("errorText"):
            raise RuntimeError(f"{url}: {navigated['errorText']}")
        self._wait_for("Page.loadEventFired")
        self._drain(0.3)  # late console messages
        images = json.loads(
            self._call("Runtime.evaluate", expression=_IMAGES_JS, returnByValue=True)["result"][
                "value"
            ]
        )
        title = self._call("Runtime.evaluate", expression="document.title", returnByValue=True)
        size = self._call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self._call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        return PageLoad(
            errors=self._errors(),
            images=images,
            screenshot=base64.b64decode(shot["data"]),
            title=str(title["result"].get("value", "")),
        )

    def close(self) -> None:
        """End the browser and remove its profile."""
        with contextlib.suppress(Exception):
            self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
