"""The round driver: one run of an app as a sequence of messages to sites, with no I/O.

Every run goes through it: the coordinator carries its messages over connectors (local
processes, SSH), and in-memory runs (``fedflow.runtime.simulate``, the fidelity suite) carry them
to node agents in this process. There is no other round loop.

    driver = Driver("kmeans", raw_params, seed=…, min_count=…)
    prepare = driver.prepare(infos)          # resolve params against the sites' columns → Prepare
    driver.begin(rows)                       # rows each site will use → the first step
    while (tasks := driver.tasks()) is not None:
        driver.feed(replies_to(tasks))       # site name → Reply
    driver.outcome()                         # the result, resolved params, rounds, notes

Replies are decoded into the phase's reply type; a reply that does not fit is a protocol failure
blamed on the site that sent it.

With ``secure=True`` (the study's ``secure = true``) a round of a summed phase is a
``MaskedRound`` (``fedflow.runtime.secure``; one exchange, under the pairwise keys the sites sent
in their ``Prepared`` answers, handed over with ``prepared``) or, for an app that completes
rounds with the sites that answered (``App.partial_rounds``: training), a ``SecureRound`` with
dropout recovery (four exchanges): ``tasks()`` yields each exchange's requests (``expect`` names
the answer type) and ``feed()`` takes the answers; when the sum is known, ``aggregate_<phase>``
receives ``{SUM: the sum}``. An app whose ``App.secure`` is not
True is refused at ``prepare``, and a step to a phase that is not summed ends the run.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from fedflow.apps import get_app
from fedflow.apps.base import (
    SUM,
    App,
    Continue,
    CoordinatorContext,
    Done,
    SiteInfo,
    Step,
    decode_payload,
    encode_payload,
    merged_columns,
)
from fedflow.errors import AppError, RemoteProtocolError
from fedflow.wire import Message, Prepare, Prepared, Reply, Task

if TYPE_CHECKING:  # imported when a study is secure (cryptography: 0.3 s at every run)
    from fedflow.runtime.secure import MaskedRound, MaskedRun, SecureRound

__all__ = ["Driver", "Outcome"]


@dataclass
class Outcome:
    """What a finished run produced: the final step, the resolved parameters, rounds, notes."""

    done: Done
    params: Any
    rounds: int
    notes: list[str]


class Driver:
    """Drive ``app`` (a built-in name or ``package.module:Class``) over named sites.

    ``app_instance`` may be given to drive an already loaded app; the sites still receive
    ``app`` as the study named it, so a plug-in is loaded by the same reference everywhere.
    """

    def __init__(
        self,
        app: str,
        raw_params: Mapping[str, Any] | None,
        *,
        seed: int | None = None,
        min_count: int = 5,
        max_rounds: int = 10_000,
        app_instance: App[Any] | None = None,
        secure: bool = False,
        threshold: int | None = None,
        dropout: bool | None = None,
    ) -> None:
        self.ref = app
        self.app: App[Any] = app_instance if app_instance is not None else get_app(app)
        self.params: Any = self.app.parse_params(raw_params)
        self.seed = seed
        self.min_count = min_count
        self.max_rounds = max_rounds
        self.ctx: CoordinatorContext | None = None
        self.step: Step | None = None
        self.resumed: tuple[int, dict[str, Any]] | None = None
        """Rounds done and the app's state of an interrupted run to continue (``restore``)."""
        self.secure = secure
        """Secure aggregation: only summed phases, each round a ``SecureRound``."""
        self.threshold = threshold
        """The Shamir threshold of secure rounds (None: a majority of the sites)."""
        self.session_id = secrets.token_bytes(16)
        """Fresh per run: no secure message of another run opens in this one."""
        self.dropout = self.app.partial_rounds if dropout is None else dropout
        """Secure rounds with dropout recovery (four exchanges) instead of one exchange."""
        self.masked_run: MaskedRun | None = None
        """The one-exchange protocol's keys and counter (from ``prepared``)."""
        self.secure_round: SecureRound | MaskedRound | None = None
        """The secure round in flight, if any."""

    def restore(self, rounds: int, state: Mapping[str, Any]) -> None:
        """Continue an interrupted run: ``begin`` starts after ``rounds`` rounds, with the app's
        ``ctx.state`` as checkpointed (the app's ``start`` picks up from there)."""
        self.resumed = (rounds, dict(state))

    @property
    def rounds(self) -> int:
        """Rounds sent so far."""
        return self.ctx.round if self.ctx else 0

    @property
    def phase(self) -> str | None:
        """The phase of the round in flight (None before the first and after the last)."""
        return self.step.phase if isinstance(self.step, Continue) else None

    @property
    def in_round(self) -> bool:
        """Whether the round in flight needs further exchanges (a secure round's next step)."""
        return self.secure_round is not None

    def prepare(self, infos: Mapping[str, SiteInfo]) -> Prepare:
        """Resolve the parameters against the sites' merged columns; return the Prepare message."""
        if not infos:
            raise AppError("no sites")
        if self.secure:
            self._check_secure(len(infos))
        self.params = self.app.resolve(self.params, merged_columns(infos))
        return Prepare(
            app=self.ref,
            params=self.app.params_to_dict(self.params),
            columns=dict(self.app.columns(self.params)),
            secure=self.secure,
        )

    def prepared(self, replies: Mapping[str, Prepared]) -> None:
        """Take the sites' ``Prepared`` answers: with ``secure = true`` (no dropout recovery)
        each carries the site's public key for the run's pairwise masks. Raises
        RemoteProtocolError naming a site that sent none, or one not of 32 bytes."""
        if not self.secure or self.dropout:
            return
        keys = {}
        for name, reply in replies.items():
            if reply.mask_pk is None or len(reply.mask_pk) != 32:
                raise RemoteProtocolError(
                    "sent no 32-byte public key for secure aggregation in its Prepared answer",
                    site=name,
                )
            keys[name] = reply.mask_pk
        from fedflow.runtime.secure import MaskedRun

        self.masked_run = MaskedRun(self.session_id, keys, self.threshold)

    def _check_secure(self, n: int) -> None:
        support = type(self.app).secure
        if support is not True:
            reason = support if isinstance(support, str) and support else "it declares no support"
            raise AppError(f"app '{self.app.name}' cannot run with secure = true: {reason}")
        if n < 2:
            raise AppError(
                "secure = true needs at least two sites (a sum over one site is its own)"
            )
        from fedflow.runtime.secure import majority

        low = majority(n)
        if self.threshold is not None and not low <= self.threshold <= n:
            raise AppError(
                f"secure_threshold = {self.threshold} must lie in {low}..{n} for {n} sites "
                "(at least a majority)"
            )

    def begin(self, sites: Mapping[str, SiteInfo]) -> None:
        """Start the conversation with the sites as prepared (rows each will use)."""
        self.ctx = CoordinatorContext(
            sites=dict(sites), seed=self.seed, min_count=self.min_count, secure=self.secure
        )
        if self.resumed is not None:
            self.ctx.round, saved = self.resumed
            self.ctx.state.update(saved)
        self.step = self.app.start(self.params, self.ctx)
        if isinstance(self.step, Continue):
            self.app.check_phase(self.step.phase)

    @property
    def expect(self) -> type[Message]:
        """The answer type of the messages ``tasks()`` returned last."""
        return self.secure_round.expect if self.secure_round is not None else Reply

    def tasks(self) -> dict[str, Message] | None:
        """Return the next message for every site (a round's Task, or the next step of a secure
        round), or None when the app is done."""
        if self.secure_round is not None:
            return self.secure_round.requests()
        if self.ctx is None or not isinstance(self.step, Continue):
            return None
        if self.ctx.round >= self.max_rounds:
            raise AppError(f"app '{self.app.name}' did not finish within {self.max_rounds} rounds")
        self.ctx.round += 1
        step = self.step
        per_site = step.per_site or {}
        shared = encode_payload(step.request)
        if self.secure:
            if not self.app.check_phase(step.phase).summed:
                raise AppError(
                    f"app '{self.app.name}' stepped to phase '{step.phase}', which is not summed, "
                    "with secure = true (only summed phases run securely)"
                )
            payloads = {
                name: encode_payload(per_site[name]) if name in per_site else shared
                for name in self.ctx.sites
            }
            reply = self.app.check_phase(step.phase).reply
            from fedflow.runtime.secure import MaskedRound, SecureRound, majority

            if not self.dropout:
                if self.masked_run is None or set(self.masked_run.keys) != set(self.ctx.sites):
                    raise AppError(
                        "secure = true: the sites' public keys were not taken (Driver.prepared)"
                    )
                self.secure_round = MaskedRound(
                    self.masked_run,
                    self.ctx.round,
                    step.phase,
                    reply,
                    payloads,
                    list(self.ctx.sites),
                )
                return self.secure_round.requests()
            self.secure_round = SecureRound(
                self.session_id,
                self.ctx.round,
                step.phase,
                reply,
                payloads,
                list(self.ctx.sites),
                self.threshold or majority(len(self.ctx.sites)),
                dropout=True,
            )
            return self.secure_round.requests()
        return {
            name: Task(
                round=self.ctx.round,
                phase=step.phase,
                payload=encode_payload(per_site[name]) if name in per_site else shared,
            )
            for name in self.ctx.sites
        }

    def feed(self, replies: Mapping[str, Message]) -> None:
        """Take every site's answer to the messages ``tasks()`` returned; at the end of a round,
        decode the replies (or take the secure sum) and aggregate them."""
        assert self.ctx is not None and isinstance(self.step, Continue), "no round in flight"
        phase = self.step.phase
        if self.secure_round is not None:
            self.secure_round.feed(replies)
            if self.secure_round.done:
                summed = self.secure_round.result
                assert summed is not None
                self._note_dropped(self.secure_round)
                aggregation = getattr(self.secure_round, "aggregation", None)
                self.ctx.summed_over = [  # who is in the sum (not what each sent)
                    n
                    for n in self.secure_round.sites
                    if aggregation is None or n in aggregation.masked
                ]
                self.secure_round = None
                self.step = self.app.aggregate(phase, {SUM: summed}, self.params, self.ctx)
            return
        kind = self.app.check_phase(phase).reply
        decoded = {}
        for name in self.ctx.sites:  # study order: aggregation never depends on arrival
            if name not in replies and self.app.partial_rounds:
                continue  # a site lost this round (an app that aggregates those who answered)
            reply = replies[name]
            if not isinstance(reply, Reply):
                raise RemoteProtocolError(f"expected Reply, got {type(reply).__name__}", site=name)
            if reply.round != self.ctx.round:
                raise RemoteProtocolError(
                    f"answered round {reply.round} during round {self.ctx.round}", site=name
                )
            try:
                decoded[name] = decode_payload(reply.payload, kind)
            except msgspec.ValidationError as exc:
                raise RemoteProtocolError(
                    f"its reply to phase '{phase}' of app '{self.app.name}' does not fit: {exc}",
                    site=name,
                ) from None
        self.step = self.app.aggregate(phase, decoded, self.params, self.ctx)

    def _note_dropped(self, round_: SecureRound | MaskedRound) -> None:
        """With dropout recovery: note the sites whose reply is not in the round's sum."""
        aggregation = getattr(round_, "aggregation", None)
        if aggregation is None or self.ctx is None:
            return
        left = [n for n in round_.sites if n not in aggregation.masked]
        if not left:
            return
        note = (
            f"round {round_.round}: the secure sum is over "
            f"{', '.join(n for n in round_.sites if n in aggregation.masked)}, without "
            f"{', '.join(left)} (no answer)"
        )
        unmasked = [n for n in left if n in aggregation.shares]
        if unmasked:  # shared its keys, then sent no masked vector
            note += f"; the masks of {', '.join(unmasked)} were removed with the survivors' shares"
        self.ctx.notes.append(note)

    def outcome(self) -> Outcome:
        """Return the outcome of a finished conversation."""
        if not isinstance(self.step, Done):
            raise AppError(f"app '{self.app.name}' has not finished")
        assert self.ctx is not None
        return Outcome(
            done=self.step, params=self.params, rounds=self.ctx.round, notes=self.ctx.notes
        )
