"""The node agent's protocol logic, driven message by message, and its stdio loop."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from fedflow._version import __version__
from fedflow.node.agent import NodeAgent, serve
from fedflow.node.siteconfig import SiteConfig
from fedflow.wire import (
    PROTOCOL_VERSION,
    Bye,
    Failure,
    Finish,
    FrameDecoder,
    Hello,
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


def data_file(tmp_path: Path) -> str:
    path = tmp_path / "site.csv"
    path.write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(10)))
    return str(path)


_OLS = {"target": "y", "features": ["x"]}
_COLUMNS = {"x": "numeric", "y": "numeric"}


def test_full_conversation(tmp_path: Path) -> None:
    agent = NodeAgent("berlin")
    welcome = agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="berlin"))
    assert (
        isinstance(welcome, Welcome) and welcome.site == "berlin" and welcome.version == __version__
    )
    ready = agent.handle(Setup(data=[data_file(tmp_path)], min_count=5))
    assert isinstance(ready, Ready) and ready.rows == 10
    assert [(c.name, c.dtype) for c in ready.columns] == [("x", "int"), ("y", "int")]
    prepared = agent.handle(Prepare(app="linear-regression", params=_OLS, columns=_COLUMNS))
    assert prepared == Prepared(rows=10)
    reply = agent.handle(Task(round=1, phase="factor", payload={}))
    assert isinstance(reply, Reply)
    assert reply.payload["n"] == 10 and reply.payload["y_mean"] == 10.0
    assert reply.payload["r"].shape == (3, 3)
    bye = agent.handle(Finish())
    assert isinstance(bye, Bye) and bye.peak_rss > 0


def test_out_of_order_and_failures_are_replies_not_crashes(tmp_path: Path) -> None:
    agent = NodeAgent("s")
    failure = agent.handle(Task(round=1, phase="factor", payload={}))
    assert isinstance(failure, Failure) and failure.kind == "protocol"
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"))
    missing = agent.handle(Setup(data=[str(tmp_path / "nope.csv")]))
    assert (
        isinstance(missing, Failure)
        and missing.kind == "data"
        and "does not exist" in missing.message
    )


def test_unknown_app_and_policy(tmp_path: Path) -> None:
    for config, kind in ((None, "app"), (SiteConfig(allowed_apps=frozenset({"stats"})), "policy")):
        agent = NodeAgent("s", config)
        agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"))
        agent.handle(Setup(data=[data_file(tmp_path)]))
        app = "no-such-app" if kind == "app" else "linear-regression"
        reply = agent.handle(Prepare(app=app, params={"target": "y"}, columns={}))
        assert isinstance(reply, Failure) and reply.kind == kind


def test_a_task_for_an_undeclared_phase_or_with_a_wrong_payload_is_refused(
    tmp_path: Path,
) -> None:
    agent = NodeAgent("s")
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"))
    agent.handle(Setup(data=[data_file(tmp_path)]))
    agent.handle(Prepare(app="linear-regression", params=_OLS, columns=_COLUMNS))
    unknown = agent.handle(Task(round=1, phase="__init__", payload={}))
    assert isinstance(unknown, Failure) and "no phase '__init__'" in unknown.message
    wrong = agent.handle(Task(round=1, phase="factor", payload={"r": 1}))
    assert isinstance(wrong, Failure) and wrong.kind == "protocol"
    assert isinstance(agent.handle(Task(round=1, phase="factor", payload={})), Reply)


def test_site_policy_raises_min_count(tmp_path: Path) -> None:
    agent = NodeAgent("s", SiteConfig(min_count=50))
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"))
    agent.handle(Setup(data=[data_file(tmp_path)], min_count=5))
    reply = agent.handle(Prepare(app="stats", params={"columns": ["x"]}, columns={"x": "numeric"}))
    assert isinstance(reply, Failure) and "fewer than min_count = 50" in reply.message


@pytest.mark.parametrize("leave", [False, True])
def test_app_outputs_are_written_only_to_the_site_folder(tmp_path: Path, leave: bool) -> None:
    agent = NodeAgent("s", SiteConfig(outputs_leave_site=leave))
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"))
    out = tmp_path / "out"
    agent.handle(Setup(data=[data_file(tmp_path)], outputs=str(out)))
    agent.handle(Prepare(app="linear-regression", params=_OLS, columns=_COLUMNS))
    agent.handle(Task(round=1, phase="factor", payload={}))
    assert agent._ctx is not None
    agent._ctx.outputs["../escape.csv"] = b"a,b\n"
    bye = agent.handle(Finish())
    # written at the site; listed for the coordinator to fetch only when the site allows it
    assert isinstance(bye, Bye) and bye.outputs == (["escape.csv"] if leave else [])
    assert (out / "escape.csv").read_bytes() == b"a,b\n"
    assert not (tmp_path / "escape.csv").exists()


def test_output_names_that_are_no_plain_file_name_are_refused(tmp_path: Path) -> None:
    # a twin's output names come from the study's config.yml: the coordinator's words
    agent = NodeAgent("s", SiteConfig(outputs_leave_site=True))
    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"))
    out = tmp_path / "site" / "out"
    out.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"kept")
    (out / "link.csv").symlink_to(elsewhere)
    agent.handle(Setup(data=[data_file(tmp_path)], outputs=str(out)))
    agent.handle(Prepare(app="linear-regression", params=_OLS, columns=_COLUMNS))
    agent.handle(Task(round=1, phase="factor", payload={}))
    assert agent._ctx is not None
    for name in ("..", ".", "", "a/..", "link.csv"):
        agent._ctx.outputs[name] = b"x"
    agent._ctx.outputs["fine.csv"] = b"y"
    bye = agent.handle(Finish())
    assert isinstance(bye, Bye) and bye.outputs == ["fine.csv"]
    assert elsewhere.read_bytes() == b"kept"
    assert sorted(p.name for p in out.iterdir()) == ["fine.csv", "link.csv"]


def test_serve_answers_frames_and_stops_at_finish(tmp_path: Path) -> None:
    codec = MessageCodec()
    requests = [
        Hello(protocol=PROTOCOL_VERSION, version=__version__, site="s"),
        Setup(data=[data_file(tmp_path)]),
        Prepare(app="linear-regression", params=_OLS, columns=_COLUMNS),
        Task(round=1, phase="factor", payload={"unused": np.zeros(2)}),
        Finish(),
    ]
    stdin = io.BytesIO(b"".join(encode_frame(codec.encode(m)) for m in requests))
    stdout = io.BytesIO()
    assert serve(NodeAgent("s"), stdin, stdout) == 0
    decoder = FrameDecoder()
    decoder.feed(stdout.getvalue())
    replies = []
    while (payload := decoder.next_frame()) is not None:
        replies.append(codec.decode(payload))
    assert [type(r).__name__ for r in replies] == [
        "Welcome",
        "Ready",
        "Prepared",
        "Failure",  # a payload field the phase does not declare is refused
        "Bye",
    ]
    assert "does not fit" in replies[3].message


def test_serve_exits_on_truncated_frame_and_answers_garbage() -> None:
    stdout = io.BytesIO()
    garbage = encode_frame(b"\xc1\xc1")
    assert serve(NodeAgent("s"), io.BytesIO(garbage + b"\x00\x00\x01"), stdout) == 1
    decoder = FrameDecoder()
    decoder.feed(stdout.getvalue())
    reply = MessageCodec().decode(decoder.next_frame())
    assert isinstance(reply, Failure) and reply.kind == "protocol"


def test_site_configuration_is_strict_and_command_line_options_only_tighten(
    tmp_path: Path,
) -> None:
    import pytest

    from fedflow.errors import PolicyError
    from fedflow.node.agent import tighten
    from fedflow.node.siteconfig import load_config

    path = tmp_path / "site-policy.toml"
    assert load_config(path) == SiteConfig()  # no file: nothing configured
    path.write_text('allowed_apps = ["stats", "pca"]\nmin_count = 20\n')
    config = tighten(load_config(path), allow=["stats", "cox"], min_count=50)
    assert config.allowed_apps == frozenset({"stats"}) and config.min_count == 50
    assert tighten(load_config(path), allow=None, min_count=3).min_count == 20
    path.write_text("min_cont = 3\n")
    with pytest.raises(
        PolicyError, match="unknown key 'min_cont' \\(did you mean 'min_count'\\?\\)"
    ):
        load_config(path)
    path.write_text("min_count = 0\n")
    with pytest.raises(PolicyError, match="positive integer"):
        load_config(path)
    path.write_text('[datasets.cohort]\npath = "c.csv"\ncolums = ["a"]\n')
    with pytest.raises(PolicyError, match="unknown key 'datasets.cohort.colums'"):
        load_config(path)
    path.write_text('approved_code = ["md5:abc"]\n')
    with pytest.raises(PolicyError, match="approved_code"):
        load_config(path)
