"""Drive an app's conversation in one process, with every task and reply through the wire codec,
and (``secure=True``) each summed phase's replies replaced by their sum over sites — the
reference semantics of secure aggregation (``fedflow.apps.base.sum_replies``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedflow.apps import get_app
from fedflow.apps.base import (
    SUM,
    Continue,
    CoordinatorContext,
    Done,
    SiteContext,
    SiteInfo,
    Table,
    decode_payload,
    encode_payload,
    merged_columns,
    sum_replies,
)
from fedflow.wire import Reply, Task
from fedflow.wire.messages import MessageCodec

__all__ = ["Driven", "drive"]


@dataclass
class Driven:
    """What a driven run gave: the result, its rounds, and what the coordinator received."""

    result: dict[str, Any]
    rounds: int
    received: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    """(phase, replies as the aggregate got them) per round."""
    notes: list[str] = field(default_factory=list)


def drive(
    app_name: str,
    raw: Mapping[str, Any] | None,
    sites: Mapping[str, Table],
    *,
    secure: bool,
    min_count: int = 5,
    max_rounds: int = 50,
) -> Driven:
    """Run ``app_name`` over ``sites``; under ``secure`` refuse any phase that is not summed."""
    app = get_app(app_name)
    codec = MessageCodec()
    infos = {
        name: SiteInfo(
            name, t.n_rows, {c: "float" if t.is_numeric(c) else "str" for c in t.columns}
        )
        for name, t in sites.items()
    }
    params = app.resolve(app.parse_params(raw), merged_columns(infos))
    coordinator = CoordinatorContext(sites=infos, min_count=min_count, secure=secure)
    contexts = {name: SiteContext(site=name, min_count=min_count, secure=secure) for name in sites}
    driven = Driven(result={}, rounds=0)
    step = app.start(params, coordinator)
    while isinstance(step, Continue):
        if driven.rounds >= max_rounds:
            raise AssertionError(f"more than {max_rounds} rounds")
        driven.rounds += 1
        phase = app.check_phase(step.phase)
        assert not secure or phase.summed, f"phase {step.phase} is not summed"
        replies = {}
        for name, table in sites.items():
            sent = (step.per_site or {}).get(name, step.request)
            task = codec.decode(
                codec.encode(
                    Task(round=driven.rounds, phase=step.phase, payload=encode_payload(sent))
                )
            )
            assert isinstance(task, Task)
            request = decode_payload(task.payload, phase.request)
            contexts[name].round = driven.rounds
            reply = app.local(table, params, step.phase, request, contexts[name])
            back = codec.decode(
                codec.encode(Reply(round=driven.rounds, payload=encode_payload(reply)))
            )
            assert isinstance(back, Reply)
            replies[name] = decode_payload(back.payload, phase.reply)
        received = {SUM: sum_replies(replies, phase.reply)} if secure else replies
        driven.received.append((step.phase, received))
        coordinator.round = driven.rounds
        step = app.aggregate(step.phase, received, params, coordinator)
    assert isinstance(step, Done)
    driven.result = step.result
    driven.notes = list(coordinator.notes)
    return driven
