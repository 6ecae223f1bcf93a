"""The real site operations: reuse a running controller, or start one with the `featurecloud` CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from fedflow.errors import SiteError, StudyError
from fedflow.featurecloud.fake import FakeController, FakeWeb
from fedflow.featurecloud.workflow import LocalSiteOps
from fedflow.study import study_from_dict

FAKE_CLI = """#!/bin/sh
# a stand-in for the `featurecloud` package's command line (tests only)
case "$1 $2" in
  "controller start")
    "$FAKE_FC_PYTHON" -m fedflow.featurecloud.fake controller --port "$FAKE_FC_PORT" \\
        --web "$FAKE_FC_WEB" --data-dir "$4" </dev/null >"$FAKE_FC_STATE/log" 2>&1 &
    echo $! >"$FAKE_FC_STATE/pid"
    exit 0;;
  "controller stop")
    kill "$(cat "$FAKE_FC_STATE/pid")"
    exit 0;;
esac
echo "unexpected: $*" >&2
exit 2
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def study(tmp_path: Path, **client: object) -> object:
    raw = {
        "platform": "featurecloud",
        "tool": "mean-app",
        "clients": [{"name": "berlin", "fc_username": "a", **client}],
    }
    return study_from_dict(raw, source=tmp_path / "study.toml")


def test_a_running_controller_is_reused_and_left_running(tmp_path: Path) -> None:
    with FakeWeb({}) as web, FakeController(web.url, tmp_path) as ctl:
        s = study(tmp_path, controller=ctl.url)
        ops = LocalSiteOps(s)  # type: ignore[arg-type]
        site = s.clients[0]  # type: ignore[attr-defined]
        assert ops.start(site, tmp_path) == ctl.url
        ops.stop(site)
        assert not ops.started
        assert httpx.get(f"{ctl.url}/ping/").status_code == 200


def test_remote_site_needs_a_controller_url(tmp_path: Path) -> None:
    s = study(tmp_path, hostname="fl.example.org")
    with pytest.raises(StudyError, match="remote FeatureCloud site needs controller"):
        LocalSiteOps(s).start(s.clients[0], tmp_path)  # type: ignore[arg-type, attr-defined]


def test_missing_tools_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    s = study(tmp_path, controller=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SiteError, match="`docker` is not installed"):
        LocalSiteOps(s).start(s.clients[0], tmp_path)  # type: ignore[arg-type, attr-defined]


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as the featurecloud CLI")
def test_controller_is_started_and_stopped_with_the_featurecloud_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("featurecloud", FAKE_CLI), ("docker", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    port = free_port()
    with FakeWeb({}) as web:
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_FC_PYTHON", sys.executable)
        monkeypatch.setenv("FAKE_FC_PORT", str(port))
        monkeypatch.setenv("FAKE_FC_WEB", web.url)
        monkeypatch.setenv("FAKE_FC_STATE", str(state))
        url = f"http://127.0.0.1:{port}"
        s = study(tmp_path, controller=url)
        ops = LocalSiteOps(s, start_timeout=30, ping_interval=0.1)  # type: ignore[arg-type]
        site = s.clients[0]  # type: ignore[attr-defined]
        try:
            assert ops.start(site, tmp_path / "data") == url
            assert ops.started == {"berlin"}
            ops.stop(site)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{url}/ping/", timeout=1)
                except httpx.HTTPError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the controller still answers after `featurecloud controller stop`")
        finally:
            pid_file = state / "pid"
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
