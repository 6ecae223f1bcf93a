"""A hostile coordinator against a bare agent (``python -m fedflow.node``, no options), over the
agent's real stdin/stdout: every request the site should refuse is refused, nothing is opened or
imported because the coordinator named it, and every request lands in the hash-chained audit log."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from fedflow._version import __version__
from fedflow.errors import PolicyError
from fedflow.node.audit import verify
from fedflow.node.siteops import approve, check, show_log
from fedflow.wire import (
    PROTOCOL_VERSION,
    Bye,
    Failure,
    Finish,
    Hello,
    Message,
    MessageCodec,
    Prepare,
    Prepared,
    Ready,
    Reply,
    Setup,
    Task,
    Welcome,
    encode_frame,
)

codec = MessageCodec()
ROOT = Path(__file__).resolve().parents[2]


class Site:
    """A bare agent in its own process, spoken to frame by frame."""

    def __init__(self, home: Path, *args: str, extra_path: Path | None = None) -> None:
        env = dict(os.environ)
        env.update(
            FEDFLOW_SITE_POLICY=str(home / "site-policy.toml"),
            XDG_STATE_HOME=str(home / "state"),
            XDG_DATA_HOME=str(home / "data"),
            PYTHONPATH=os.pathsep.join(
                [str(p) for p in (extra_path, ROOT) if p] + [env.get("PYTHONPATH", "")]
            ),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedflow.node", "--site", "h", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def raw(self, payload: bytes) -> Message | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(encode_frame(payload))
        self.proc.stdin.flush()
        header = self.proc.stdout.read(4)
        if len(header) < 4:
            return None
        (n,) = struct.unpack(">I", header)
        return codec.decode(self.proc.stdout.read(n))

    def ask(self, message: Message) -> Message | None:
        return self.raw(codec.encode(message))

    def hello(self) -> None:
        reply = self.ask(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
        assert isinstance(reply, Welcome)

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(10)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    data = tmp_path / "srv"
    data.mkdir()
    rows = "".join(f"{i},{(i * 7) % 11},{i % 2},{100 + i}\n" for i in range(30))
    (data / "cohort.csv").write_text("age,time,event,secret\n" + rows)
    (data / "tiny.csv").write_text("age,time,event,secret\n1,2,1,9\n2,3,0,9\n3,4,1,9\n")
    (tmp_path / "site-policy.toml").write_text(
        f'allowed_apps = ["stats", "linear-regression", "pca"]\n'
        f'[datasets.cohort]\npath = "{data / "cohort.csv"}"\ncolumns = ["age", "time", "event"]\n'
        f'[datasets.tiny]\npath = "{data / "tiny.csv"}"\n'
    )
    return tmp_path


def _audit(home: Path) -> list[dict]:
    path = home / "state" / "fedflow" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_named_file_is_refused_without_being_opened(home: Path) -> None:
    fifo = home / "fifo.csv"
    os.mkfifo(fifo)  # opening a FIFO for reading would block: the agent must not even open it
    site = Site(home)
    site.hello()
    reply = site.ask(Setup(data=[str(fifo)], study="probe"))
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert "serves only the datasets" in reply.message
    secret = site.ask(Setup(data=[str(home / "srv" / "cohort.csv")]))
    assert isinstance(secret, Failure) and "secret" not in secret.message
    assert site.close() == 0
    (entry, _) = _audit(home)
    assert entry["outcome"] == "refused" and entry["files"] == [str(fifo)]


def test_a_named_module_is_never_imported(home: Path) -> None:
    plugin = home / "plugins"
    plugin.mkdir()
    marker = home / "imported"
    (plugin / "sideeffect.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    site = Site(home, extra_path=plugin)
    site.hello()
    assert isinstance(site.ask(Setup(dataset="cohort", study="probe")), Ready)
    for app, code in (("sideeffect:X", None), ("antigravity:X", None), ("sideeffect:X", "x=1")):
        reply = site.ask(Prepare(app=app, params={}, columns={}, code=code))
        assert isinstance(reply, Failure) and reply.kind == "policy", reply
        assert "not approved here" in reply.message
    site.close()
    assert not marker.exists()


@pytest.mark.parametrize("asked", [1, 0, -100, 2**63])
def test_the_sites_floor_holds_whatever_the_coordinator_asks(home: Path, asked: int) -> None:
    site = Site(home)
    site.hello()
    ready = site.ask(Setup(dataset="tiny", min_count=asked, study="probe"))
    if asked < 1 or asked >= 2**63:
        assert isinstance(ready, Failure) and "outside 1" in ready.message
        return
    # a lower min_count is refused before any file is read, naming the floor
    assert isinstance(ready, Failure) and ready.kind == "policy"
    assert f"asks min_count = {asked}, below this site's floor of 5" in ready.message
    site.close()
    site = Site(home)
    site.hello()
    assert isinstance(site.ask(Setup(dataset="tiny", min_count=5, study="probe")), Ready)
    reply = site.ask(Prepare(app="stats", params={"columns": ["age"]}, columns={"age": "numeric"}))
    assert isinstance(reply, Failure) and "fewer than min_count = 5" in reply.message
    site.close()


def test_only_configured_datasets_and_columns_are_served(home: Path) -> None:
    site = Site(home)
    site.hello()
    assert isinstance(site.ask(Setup(dataset="other")), Failure)
    site.close()
    site = Site(home)
    site.hello()
    ready = site.ask(Setup(dataset="cohort", study="probe"))
    assert isinstance(ready, Ready)
    assert [c.name for c in ready.columns] == ["age", "time", "event"]  # never 'secret'
    refused = site.ask(
        Prepare(app="stats", params={"columns": ["secret"]}, columns={"secret": "numeric"})
    )
    assert isinstance(refused, Failure) and "does not offer column(s) secret" in refused.message
    site.close()


def test_an_app_the_site_does_not_allow_is_refused(home: Path) -> None:
    site = Site(home)
    site.hello()
    site.ask(Setup(dataset="cohort"))
    reply = site.ask(Prepare(app="kmeans", params={"k": 2}, columns={"age": "numeric"}))
    assert isinstance(reply, Failure) and "does not allow app 'kmeans'" in reply.message
    site.close()


def test_outputs_go_only_under_the_sites_own_folder_and_stay_there(home: Path) -> None:
    from fedflow.node.agent import NodeAgent
    from fedflow.node.siteconfig import load_config

    config = load_config(home / "site-policy.toml")
    agent = NodeAgent("h", dataclasses.replace(config, outputs=home / "own"), owned=False)
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="h"))
    evil = home / "evil"
    agent.handle(Setup(dataset="cohort", outputs=str(evil), study="../../x"))
    ols = {"target": "age", "features": ["time"]}
    agent.handle(
        Prepare(app="linear-regression", params=ols, columns={"age": "numeric", "time": "numeric"})
    )
    assert isinstance(agent.handle(Task(round=1, phase="factor", payload={})), Reply)
    assert agent._ctx is not None
    agent._ctx.outputs["projections.csv"] = b"pc1\n0.5\n"
    bye = agent.handle(Finish())
    assert isinstance(bye, Bye) and bye.outputs == []  # nothing offered to the coordinator
    assert not evil.exists()
    assert (home / "own" / "x" / "projections.csv").read_bytes() == b"pc1\n0.5\n"


def test_a_hostile_frame_gets_a_failure_and_the_agent_keeps_serving(home: Path) -> None:
    site = Site(home)
    site.hello()
    head = msgspec.msgpack.encode({"type": "task", "round": 1, "phase": "x"})
    nested = b"\x84" + head[1:] + b"\xa7payload\x81\xa1a" + b"\x91" * 1000 + b"\xc0"
    reply = site.raw(nested)
    assert isinstance(reply, Failure) and reply.kind == "protocol"
    assert isinstance(site.ask(Setup(dataset="cohort")), Ready)
    site.close()


def test_approved_code_runs_from_the_sites_own_copy_and_nothing_else(home: Path) -> None:
    source = (ROOT / "examples" / "plugin" / "twopass.py").read_text()
    approved = home / "twopass.py"
    approved.write_text(source)
    line = approve(approved, home / "site-policy.toml")
    assert "approved twopass.py: sha256:" in line
    assert "approved code: sha256:" in check(home / "site-policy.toml")
    for code, ok in ((source, True), (source + "\n# changed\n", False)):
        site = Site(home)
        site.hello()
        site.ask(Setup(dataset="cohort", study="plug"))
        reply = site.ask(
            Prepare(
                app="twopass:TwoPassVariance",
                params={"column": "age"},
                columns={"age": "numeric"},
                code=code,
            )
        )
        assert isinstance(reply, Prepared) is ok, reply
        if ok:
            answer = site.ask(Task(round=1, phase="sums", payload={}))
            assert isinstance(answer, Reply) and answer.payload["n"] == 30
        site.close()
    entries = _audit(home)
    prepared = [e for e in entries if e["event"] == "prepare"]
    assert prepared[0]["outcome"] == "answered" and prepared[0]["code_sha256"].startswith("sha256:")
    assert prepared[1]["outcome"] == "refused"
    released = [e for e in entries if e["outcome"] == "released"]
    assert released and released[0]["released"]["shape"] == {"n": "int", "total": "float"}


def test_the_audit_chain_detects_an_edited_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    site = Site(home)
    site.hello()
    site.ask(Setup(dataset="cohort", study="s1"))
    site.ask(Prepare(app="stats", params={"columns": ["age"]}, columns={"age": "numeric"}))
    site.ask(Task(round=1, phase="summary", payload={}))
    site.ask(Finish())
    site.close()
    log = home / "state" / "fedflow" / "audit.jsonl"
    assert verify(log).ok and verify(log).lines == 4
    assert "chain intact" in show_log(home / "site-policy.toml", check_chain=True)
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"stats"', '"pca"')
    log.write_text("\n".join(lines) + "\n")
    result = verify(log)
    assert not result.ok and result.broken_at == 3
    with pytest.raises(PolicyError, match="line 3"):
        show_log(home / "site-policy.toml", check_chain=True)


def test_an_owned_agent_keeps_todays_behaviour(home: Path) -> None:
    site = Site(home, "--owned")
    site.hello()
    ready = site.ask(Setup(data=[str(home / "srv" / "tiny.csv")], min_count=1))
    assert isinstance(ready, Ready) and ready.rows == 3
    prepared = site.ask(
        Prepare(app="stats", params={"columns": ["age"]}, columns={"age": "numeric"})
    )
    assert isinstance(prepared, Prepared)
    site.close()
    assert not (home / "state").exists()  # owned sites log to their run's log, not the audit


def test_the_site_works_out_the_columns_itself(home: Path) -> None:
    site = Site(home)
    site.hello()
    site.ask(Setup(dataset="cohort", study="probe"))
    # the app needs 'age'; a coordinator that lists no column (to skip the checks) is refused
    reply = site.ask(Prepare(app="stats", params={"columns": ["age"]}, columns={}))
    assert isinstance(reply, Failure) and reply.kind == "policy"
    assert "needs {'age': 'numeric'}" in reply.message
    site.close()
