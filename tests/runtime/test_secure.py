"""secure = true through the round driver: the secure sum equals the plaintext one, refusals,
hostile coordinator messages at a site, dropout recovery, and min_count."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from fedflow.apps.base import SUM, Table, sum_replies
from fedflow.errors import AppError, DataError, RemoteProtocolError
from fedflow.node.agent import NodeAgent
from fedflow.runtime.driver import Driver
from fedflow.runtime.secure import MaskedRound, MaskedRun, SecureRound
from fedflow.runtime.simulate import in_memory, simulate
from fedflow.wire import (
    Failure,
    Hello,
    MaskedSum,
    MaskedTask,
    MessageCodec,
    Prepare,
    Prepared,
    RelayKeys,
    RelayShares,
    SecureKeys,
    SecureMasked,
    SecureTask,
    Setup,
    Task,
)
from tests.secure.summing_app import Moments, moments, site_tables

APP = "tests.secure.summing_app:SummingApp"
codec = MessageCodec()


def test_secure_and_plaintext_runs_give_identical_values() -> None:
    sites = site_tables()
    plain = simulate(APP, {}, sites)
    secure = simulate(APP, {}, sites, secure=True)
    assert secure.result == plain.result
    # and they equal the reference semantics computed here from the sites' own replies
    reference = sum_replies({n: moments(t, 4) for n, t in sites.items()}, Moments)
    assert secure.result["exact"] == [str(v) for v in reference.exact]
    assert secure.result["columns"] == reference.columns.tolist()
    assert secure.result["histogram"] == reference.histogram.tolist()
    assert secure.result["n"] == sum(t.n_rows for t in sites.values())
    rounds = secure.metrics["rounds"]
    # one exchange a round; the first takes a second one: its exact cross-products are finer
    # than the encoding proposed for a phase not seen yet (2^-80)
    assert [r["exchanges"] for r in rounds] == [2, 1] and secure.rounds == 2
    assert [r["exchanges"] for r in plain.metrics["rounds"]] == [1, 1]


def test_a_threshold_of_all_sites_and_many_sites_still_sum_exactly() -> None:
    sites = site_tables((7, 9, 11, 13, 6), seed=3)
    plain = simulate(APP, {}, sites, min_count=5)
    secure = simulate(APP, {}, sites, min_count=5, secure=True, secure_threshold=5)
    assert secure.result == plain.result


def test_an_app_without_secure_support_is_refused_with_its_reason() -> None:
    sites = site_tables()
    with pytest.raises(AppError, match="app 'faulty' cannot run with secure = true: it declares"):
        simulate("tests.plugins:Faulty", {}, sites, secure=True)


def test_a_step_to_a_phase_that_is_not_summed_ends_the_run() -> None:
    with pytest.raises(AppError, match="phase 'check', which is not summed"):
        simulate("tests.secure.summing_app:Unsummed", {}, site_tables(), secure=True)


def test_a_site_whose_layout_differs_is_named() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        simulate("tests.secure.summing_app:Ragged", {}, site_tables(), secure=True)
    assert caught.value.site == "site-2"
    assert "histogram: int64[5]" in caught.value.message
    assert "site 'site-1' announced" in caught.value.message


def test_one_site_and_a_minority_threshold_are_refused() -> None:
    sites = site_tables()
    with pytest.raises(AppError, match="at least two sites"):
        simulate(APP, {}, {"site-1": sites["site-1"]}, secure=True)
    with pytest.raises(AppError, match="secure_threshold = 1 must lie in 2..3"):
        simulate(APP, {}, sites, secure=True, secure_threshold=1)


def test_min_count_still_holds_under_secure() -> None:
    sites = site_tables((40, 3, 31))
    with pytest.raises(DataError) as caught:
        simulate(APP, {}, sites, secure=True)
    assert caught.value.site == "site-2" and "fewer than min_count = 5" in caught.value.message


# -- a site facing a hostile coordinator -----------------------------------------------------


def _prepared(name: str, table: Table, *, secure: bool = True) -> NodeAgent:
    return _prepare(name, table, secure=secure)[0]


def _prepare(name: str, table: Table, *, secure: bool = True) -> tuple[NodeAgent, Prepared]:
    agent = NodeAgent(name, preloaded=in_memory(table, name))
    from fedflow._version import __version__
    from fedflow.wire import PROTOCOL_VERSION

    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site=name))
    agent.handle(Setup(min_count=5))
    app = APP
    reply = agent.handle(
        Prepare(
            app=app,
            params={},
            columns={"x": "numeric", "y": "numeric", "k": "numeric"},
            secure=secure,
        )
    )
    assert isinstance(reply, Prepared), reply
    assert (reply.mask_pk is not None) == secure
    return agent, reply


def _codec(message):  # every message crosses the wire codec, as it would on a socket
    return codec.decode(codec.encode(message))


class Federation:
    """Real node agents driven by a SecureRound, step by step, so tests can tamper in between."""

    def __init__(self, sizes=(40, 25, 31), threshold=2) -> None:
        self.tables = site_tables(sizes)
        self.agents = {n: _prepared(n, t) for n, t in self.tables.items()}
        self.names = list(self.tables)
        self.round = SecureRound(
            b"s" * 16,
            1,
            "moments",
            Moments,
            {n: {} for n in self.names},
            self.names,
            threshold,
            dropout=True,
        )

    def ask(self, requests) -> dict:
        return {n: _codec(self.agents[n].handle(_codec(m))) for n, m in requests.items()}

    def step(self, drop=()) -> dict:
        replies = self.ask(self.round.requests())
        self.round.feed({n: r for n, r in replies.items() if n not in drop})
        return replies


def test_a_site_that_drops_after_sharing_is_unmasked_and_the_sum_is_over_the_survivors() -> None:
    fed = Federation()
    fed.step()
    fed.step()
    fed.step(drop=("site-3",))  # site-3 shared its keys but its masked vector never arrives
    fed.step()
    got = fed.round.result
    survivors = {n: moments(fed.tables[n], 4) for n in ("site-1", "site-2")}
    reference = sum_replies(survivors, Moments)
    assert got.exact == reference.exact and got.n == reference.n
    assert np.array_equal(got.columns, reference.columns)


def test_a_plain_task_is_refused_in_a_secure_run() -> None:
    agent = _prepared("site-1", site_tables()["site-1"])
    answer = agent.handle(Task(round=1, phase="moments", payload={}))
    assert (
        isinstance(answer, Failure) and "plain task in a run with secure = true" in answer.message
    )


def test_secure_steps_are_refused_in_a_plain_run() -> None:
    agent = _prepared("site-1", site_tables()["site-1"], secure=False)
    task = SecureTask(
        round=1, phase="moments", payload={}, session=b"s" * 16, sites=["site-1", "b"], threshold=2
    )
    answer = agent.handle(task)
    assert isinstance(answer, Failure) and "without secure = true" in answer.message


def _task(**changes):
    fields = {
        "round": 1,
        "phase": "moments",
        "payload": {},
        "session": b"s" * 16,
        "sites": ["site-1", "site-2", "site-3"],
        "threshold": 2,
    }
    fields.update(changes)
    return SecureTask(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 1}, "threshold 1 for 3 sites: this site needs at least a majority"),
        ({"sites": ["site-2", "site-3"]}, "without this site"),
        ({"sites": ["site-1", "site-1"]}, "or a site twice"),
        ({"sites": ["site-1", "../etc"]}, "invalid site"),
        ({"session": b"short"}, "session id of 5 bytes"),
        ({"phase": "nope"}, "has no phase 'nope'"),
    ],
)
def test_a_malformed_secure_task_is_refused(changes, message) -> None:
    agent = _prepared("site-1", site_tables()["site-1"])
    answer = agent.handle(_task(**changes))
    assert isinstance(answer, Failure) and message in answer.message, answer


def test_steps_out_of_order_replays_and_a_changed_session_are_refused() -> None:
    agent = _prepared("site-1", site_tables()["site-1"])
    early = agent.handle(RelayShares(round=1, boxes={}))
    assert isinstance(early, Failure) and "no round in flight" in early.message
    assert isinstance(agent.handle(_task()), SecureKeys)
    again = agent.handle(_task())
    assert isinstance(again, Failure) and "replayed or out of order" in again.message
    shares_first = agent.handle(RelayShares(round=1, boxes={}))
    assert isinstance(shares_first, Failure) and "shares before keys" in shares_first.message
    other = agent.handle(_task(round=2, session=b"t" * 16))
    assert isinstance(other, Failure) and "session changed" in other.message


def test_an_encoding_that_does_not_hold_the_sites_values_is_refused() -> None:
    agent = _prepared("site-1", site_tables()["site-1"])
    keys = agent.handle(_task())
    assert isinstance(keys, SecureKeys)
    relay = RelayKeys(round=1, keys={"site-1": keys.keys}, lsb=keys.lsb + 1, msb=keys.msb, terms=3)
    answer = agent.handle(relay)
    assert isinstance(answer, Failure) and "does not hold this site's values" in answer.message


def test_a_corrupted_or_replayed_share_names_the_site_that_sealed_it() -> None:
    fed = Federation()
    fed.step()
    fed.step()
    requests = fed.round.requests()
    boxes = dict(requests["site-1"].boxes)
    box = bytearray(boxes["site-2"])
    box[40] ^= 1
    boxes["site-2"] = bytes(box)
    answer = fed.agents["site-1"].handle(_codec(RelayShares(round=1, boxes=boxes)))
    assert isinstance(answer, Failure) and answer.blame == "site-2"
    assert "does not open" in answer.message

    # a share from another run's round 1 (another session id) does not open either
    old = Federation()
    old.round.session_id = b"o" * 16
    old.step()
    old.step()
    stale = old.round.requests()["site-1"].boxes
    fresh = Federation()
    fresh.step()
    fresh.step()
    answer = fresh.agents["site-1"].handle(_codec(RelayShares(round=1, boxes=dict(stale))))
    assert isinstance(answer, Failure) and answer.blame in {"site-2", "site-3"}


def test_the_coordinator_names_the_blamed_site() -> None:
    from fedflow.runtime.coordinator import _failure_error

    error = _failure_error(
        Failure(kind="protocol", message="its share does not open", blame="b"), "a"
    )
    assert isinstance(error, RemoteProtocolError) and error.site == "b"
    assert "found by site 'a'" in error.message


def test_a_masked_vector_of_the_wrong_shape_is_named() -> None:
    fed = Federation()
    fed.step()
    fed.step()
    replies = fed.ask(fed.round.requests())
    replies["site-2"] = SecureMasked(round=1, vector=np.zeros((3, 1), dtype=np.uint64))
    with pytest.raises(Exception) as caught:
        fed.round.feed(replies)
    assert getattr(caught.value, "site", None) == "site-2"


def test_the_driver_hands_the_aggregate_only_the_sum() -> None:
    seen = {}
    driver = Driver(APP, {}, secure=True)
    original = driver.app.aggregate_moments

    def spy(replies, params, ctx):
        seen.update(replies)
        return original(replies, params, ctx)

    driver.app.aggregate_moments = spy  # type: ignore[method-assign]
    tables = site_tables()
    ready = {n: _prepare(n, t) for n, t in tables.items()}
    agents = {n: agent for n, (agent, _) in ready.items()}
    from fedflow.apps.base import SiteInfo

    infos = {
        n: SiteInfo(n, t.n_rows, {"x": "float", "y": "float", "k": "int"})
        for n, t in tables.items()
    }
    prepare = driver.prepare(infos)
    assert prepare.secure is True
    driver.prepared({n: _codec(reply) for n, (_, reply) in ready.items()})
    driver.begin(infos)
    while (tasks := driver.tasks()) is not None:
        driver.feed({n: _codec(agents[n].handle(_codec(m))) for n, m in tasks.items()})
        if list(seen):
            break
    assert list(seen) == [SUM]
    assert seen[SUM].n == sum(t.n_rows for t in tables.values())


def test_wire_messages_refuse_unknown_fields() -> None:
    raw = msgspec.msgpack.encode(
        {
            "type": "keys",
            "round": 1,
            "keys": [b"a", b"b"],
            "layout": [],
            "lsb": None,
            "msb": None,
            "extra": 1,
        }
    )
    with pytest.raises(RemoteProtocolError, match="unknown field"):
        codec.decode(raw)


def test_a_site_that_drops_during_a_secure_round_ends_the_run_naming_it() -> None:
    import asyncio

    from fedflow.connectors.memory import MemoryConnector
    from fedflow.errors import SiteError
    from fedflow.runtime.coordinator import Coordinator

    tables = site_tables()
    agents = {n: NodeAgent(n, preloaded=in_memory(t, n)) for n, t in tables.items()}

    def dies_at_masking(message):
        if isinstance(message, MaskedTask) and message.round == 2:
            raise ConnectionError("the site went away")
        return agents["site-2"].handle(message)

    connectors = {
        n: MemoryConnector(n, handler=dies_at_masking if n == "site-2" else agents[n].handle)
        for n in tables
    }
    coordinator = Coordinator(APP, {}, connectors, secure=True)
    with pytest.raises(SiteError) as caught:
        asyncio.run(coordinator.run())
    assert caught.value.site == "site-2"
    # the keys were agreed and round 1 summed; round 2 was not: the run ended, nothing revealed
    assert [r["round"] for r in coordinator.metrics["rounds"]] == [1]


# -- the one-exchange protocol (no dropout recovery) -------------------------------------------


class Masked:
    """Real node agents driven by MaskedRounds, with the keys of their Prepared answers."""

    def __init__(self, sizes=(40, 25, 31)) -> None:
        self.tables = site_tables(sizes)
        ready = {n: _prepare(n, t) for n, t in self.tables.items()}
        self.agents = {n: agent for n, (agent, _) in ready.items()}
        self.keys = {n: reply.mask_pk for n, (_, reply) in ready.items()}
        self.run = MaskedRun(b"s" * 16, self.keys)

    def ask(self, requests) -> dict:
        return {n: _codec(self.agents[n].handle(_codec(m))) for n, m in requests.items()}

    def round(self, number: int) -> MaskedRound:
        names = list(self.tables)
        return MaskedRound(self.run, number, "moments", Moments, {n: {} for n in names}, names)

    def sum(self, number: int) -> MaskedRound:
        r = self.round(number)
        while not r.done:
            r.feed(self.ask(r.requests()))
        return r


def test_a_masked_round_is_one_exchange_once_the_phase_is_known_and_sums_exactly() -> None:
    fed = Masked()
    reference = sum_replies({n: moments(t, 4) for n, t in fed.tables.items()}, Moments)
    first = fed.sum(1)
    # the exact cross-products are finer than the first proposal (2^-80): a second exchange
    assert first.exchanges == 2
    second = fed.sum(2)
    assert second.exchanges == 1  # the proposal now holds every site's values, with margin
    for r in (first, second):
        got = r.result
        assert got.exact == reference.exact and got.n == reference.n
        assert got.total == reference.total
        assert np.array_equal(got.columns, reference.columns)
        assert np.array_equal(got.histogram, reference.histogram)


def _masked_task(keys=None, **changes) -> MaskedTask:
    fields = {
        "round": 1,
        "phase": "moments",
        "payload": {},
        "counter": 1,
        "lsb": -200,
        "msb": 40,
        "terms": 3,
        "session": b"s" * 16,
        "keys": keys,
    }
    fields.update(changes)
    return MaskedTask(**fields)


def test_a_site_refuses_hostile_masked_tasks() -> None:
    fed = Masked()
    agent, keys = fed.agents["site-1"], fed.keys

    def refused(message, text):
        answer = agent.handle(_codec(message))
        assert isinstance(answer, Failure) and text in answer.message, answer

    refused(_masked_task(session=None), "before the run's keys were relayed")
    refused(_masked_task(keys=keys, session=None), "a session id but no keys")
    altered = {**keys, "site-1": keys["site-2"]}
    refused(_masked_task(keys=altered), "own public key came back altered")
    refused(_masked_task(keys={**keys, "site-2": bytes(32)}), "agrees no secret (site 'site-2')")
    refused(_masked_task(keys=keys, terms=4), "sums of 4 terms in a run of 3 sites")
    first = agent.handle(_codec(_masked_task(keys=keys)))
    assert isinstance(first, MaskedSum) and first.vector is not None
    refused(_masked_task(round=2, counter=1, session=None), "mask counter 1 replayed")
    refused(_masked_task(round=1, counter=2, session=None, phase="check"), "a different request")
    other = {**keys, "site-3": fed.keys["site-2"]}
    refused(_masked_task(keys=other, round=2, counter=3), "another session or peer set")
    refused(_masked_task(keys=keys, round=2, counter=3, session=b"t" * 16), "session changed")
    ok = agent.handle(_codec(_masked_task(round=3, counter=4, session=None)))
    assert isinstance(ok, MaskedSum) and ok.vector is not None
    refused(_masked_task(round=2, counter=5, session=None), "round 2 replayed or out of order")
    # a proposal that does not hold the site's values: its range and no vector
    narrow = agent.handle(_codec(_masked_task(round=4, counter=6, session=None, lsb=-10)))
    assert isinstance(narrow, MaskedSum) and narrow.vector is None and narrow.lsb < -10


def test_the_coordinator_names_a_site_that_withholds_or_misshapes_its_vector() -> None:
    fed = Masked()
    fed.sum(1)  # the phase's ranges are known: round 2 is one exchange
    r = fed.round(2)
    replies = fed.ask(r.requests())
    replies["site-2"] = msgspec.structs.replace(replies["site-2"], vector=None)
    with pytest.raises(RemoteProtocolError, match="sent no masked vector") as caught:
        r.feed(replies)
    assert caught.value.site == "site-2"
    r = fed.round(3)
    replies = fed.ask(r.requests())
    bad = np.zeros((3, 1), dtype=np.uint64)
    replies["site-3"] = msgspec.structs.replace(replies["site-3"], vector=bad)
    with pytest.raises(RemoteProtocolError, match="not a") as caught:
        r.feed(replies)
    assert caught.value.site == "site-3"
    r = fed.round(4)
    replies = fed.ask(r.requests())
    del replies["site-1"]
    with pytest.raises(RemoteProtocolError, match="no MaskedSum") as caught:
        r.feed(replies)
    assert caught.value.site == "site-1"


def test_a_driver_without_the_sites_keys_refuses_to_start_a_secure_round() -> None:
    from fedflow.apps.base import SiteInfo

    tables = site_tables()
    driver = Driver(APP, {}, secure=True)
    infos = {
        n: SiteInfo(n, t.n_rows, {"x": "float", "y": "float", "k": "int"})
        for n, t in tables.items()
    }
    driver.prepare(infos)
    with pytest.raises(RemoteProtocolError, match="no 32-byte public key") as caught:
        driver.prepared({n: Prepared(rows=t.n_rows) for n, t in tables.items()})
    assert caught.value.site == "site-1"
    driver.begin(infos)
    with pytest.raises(AppError, match="public keys were not taken"):
        driver.tasks()


def test_the_sites_audit_log_records_what_left_it_masked(tmp_path) -> None:
    import json

    from fedflow.node.siteconfig import SiteConfig

    fed = Masked()
    log = tmp_path / "audit.jsonl"
    agent = NodeAgent(
        "site-1", SiteConfig(audit_log=log), preloaded=in_memory(fed.tables["site-1"])
    )
    from fedflow._version import __version__
    from fedflow.wire import PROTOCOL_VERSION

    agent.handle(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="site-1"))
    agent.handle(Setup(min_count=5))
    prepared = agent.handle(
        Prepare(
            app=APP,
            params={},
            columns={"x": "numeric", "y": "numeric", "k": "numeric"},
            secure=True,
        )
    )
    keys = {**fed.keys, "site-1": prepared.mask_pk}
    answer = agent.handle(_codec(_masked_task(keys=keys)))
    assert isinstance(answer, MaskedSum) and answer.vector is not None
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    masked = [e for e in entries if e["event"] == "maskedtask"]
    assert masked and masked[0]["outcome"] == "released" and masked[0]["round"] == 1
    assert masked[0]["phase"] == "moments"
    assert masked[0]["released"]["shape"] == {
        "masked": {"shape": list(answer.vector.shape), "dtype": "uint64"}
    }
