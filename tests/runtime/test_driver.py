"""The one round driver: what it sends, what it accepts back, and how apps are identified."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from fedflow.apps import App, Continue, Done, Empty, Params, Payload, Phase, SiteInfo, Table
from fedflow.connectors.memory import MemoryConnector
from fedflow.errors import AppError, RemoteProtocolError
from fedflow.node.agent import NodeAgent
from fedflow.runtime.coordinator import Coordinator
from fedflow.runtime.driver import Driver
from fedflow.runtime.simulate import in_memory, simulate
from fedflow.wire import Message, Reply, Task


def _sites(n: int = 3, rows: int = 20) -> dict[str, Table]:
    rng = np.random.default_rng(3)
    return {
        f"s{i}": Table({"x": rng.normal(size=rows), "y": rng.normal(size=rows)}) for i in range(n)
    }


def _run(handlers: Mapping[str, Any], app: str, params: dict[str, Any]) -> Any:
    import asyncio

    coordinator = Coordinator(
        app, params, {n: MemoryConnector(n, handler=h) for n, h in handlers.items()}
    )
    return asyncio.run(coordinator.run())


def test_a_plugin_with_its_own_name_is_loaded_at_the_sites_by_the_study_reference() -> None:
    sim = simulate("tests.plugins:Faulty", {"site": "none", "rounds": 2}, _sites())
    assert sim.result == {"n": 60} and sim.rounds == 2


def test_a_subclass_of_a_builtin_runs_at_the_sites_not_the_builtin() -> None:
    sites = _sites()
    plain = simulate("linear-regression", {"target": "y"}, sites).result
    sub = simulate("tests.plugins:InflatedLinear", {"target": "y"}, sites).result
    assert sub["rss"] > plain["rss"] + 1.0  # the sites' own (subclass) step ran


def test_the_study_seed_and_min_count_reach_every_site() -> None:
    result = simulate("tests.plugins:SeedEcho", {}, _sites(), seed=11, min_count=3).result
    assert result == {f"s{i}": {"seed": 11, "min_count": 3} for i in range(3)}


def _tamper(agent: NodeAgent, change: Any) -> Any:
    def handle(message: Message) -> Message:
        reply = agent.handle(message)
        return change(reply) if isinstance(reply, Reply) else reply

    return handle


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: Reply(round=r.round, payload={**r.payload, "n": "many"}), "does not fit"),
        (lambda r: Reply(round=r.round, payload={**r.payload, "extra": 1}), "does not fit"),
        (lambda r: Reply(round=r.round, payload={"n": r.payload["n"]}), "does not fit"),
        (lambda r: Reply(round=r.round + 1, payload=r.payload), "answered round 2"),
    ],
    ids=["wrong-type", "unknown-field", "missing-field", "wrong-round"],
)
def test_a_reply_that_does_not_fit_its_phase_blames_the_site(change: Any, expected: str) -> None:
    sites = _sites()
    handlers: dict[str, Any] = {
        name: NodeAgent(name, preloaded=in_memory(t, name)).handle for name, t in sites.items()
    }
    handlers["s1"] = _tamper(NodeAgent("s1", preloaded=in_memory(sites["s1"], "s1")), change)
    with pytest.raises(RemoteProtocolError) as caught:
        _run(handlers, "linear-regression", {"target": "y"})
    assert caught.value.site == "s1" and expected in caught.value.message


class _P(Params, frozen=True):
    pass


class _Hi(Payload, frozen=True):
    text: str


def test_an_app_must_implement_both_hooks_of_every_phase() -> None:
    with pytest.raises(TypeError, match="aggregate_hello"):

        class Half(App[_P]):
            name = "half"
            Params = _P
            phases = {"hello": Phase(Empty, _Hi)}

            def columns(self, params: _P) -> dict[str, Any]:
                return {}

            def local_hello(self, data: Table, params: _P, request: Empty, ctx: Any) -> _Hi:
                return _Hi(text="hi")

            def centralized(self, pooled: pd.DataFrame, params: _P) -> dict[str, Any]:
                return {}


def test_columns_is_required() -> None:
    class NoColumns(App[_P]):
        name = "no-columns"
        Params = _P
        phases = {"hello": Phase(Empty, _Hi)}

        def local_hello(self, data: Table, params: _P, request: Empty, ctx: Any) -> _Hi:
            return _Hi(text="hi")

        def aggregate_hello(self, replies: Any, params: _P, ctx: Any) -> Done:
            return Done({})

        def centralized(self, pooled: pd.DataFrame, params: _P) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match="columns"):
        NoColumns()  # type: ignore[abstract]


class _Wander(App[_P]):
    name = "wander"
    Params = _P
    phases = {"hello": Phase(Empty, _Hi)}

    def columns(self, params: _P) -> dict[str, Any]:
        return {}

    def local_hello(self, data: Table, params: _P, request: Empty, ctx: Any) -> _Hi:
        return _Hi(text="hi")

    def aggregate_hello(self, replies: Any, params: _P, ctx: Any) -> Continue:
        return Continue("goodbye", Empty())

    def centralized(self, pooled: pd.DataFrame, params: _P) -> dict[str, Any]:
        return {}


def test_the_driver_sends_typed_phases_and_refuses_an_undeclared_one() -> None:
    driver = Driver("wander", {}, app_instance=_Wander(), seed=5)
    info = SiteInfo("a", 10, {"x": "float"})
    prepare = driver.prepare({"a": info})
    assert prepare.app == "wander" and prepare.columns == {}
    driver.begin({"a": info})
    tasks = driver.tasks()
    assert tasks == {"a": Task(round=1, phase="hello", payload={})}
    with pytest.raises(AppError, match="no phase 'goodbye'"):
        driver.feed({"a": Reply(round=1, payload=msgspec.to_builtins(_Hi(text="hi")))})


def test_the_driver_stops_an_app_that_never_finishes() -> None:
    class Forever(_Wander):
        def aggregate_hello(self, replies: Any, params: _P, ctx: Any) -> Continue:
            return Continue("hello", Empty())

    driver = Driver("forever", {}, app_instance=Forever(), max_rounds=3)
    info = {"a": SiteInfo("a", 10, {})}
    driver.prepare(info)
    driver.begin(info)
    with pytest.raises(AppError, match="within 3 rounds"):
        while (tasks := driver.tasks()) is not None:
            driver.feed({"a": Reply(round=tasks["a"].round, payload={"text": "hi"})})
