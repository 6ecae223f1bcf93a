"""A training round that survives failed and slow sites: ``round_timeout``, ``retries`` and the
``min_sites`` quorum (the coordinator's ``round_exchange`` hook for ``app = "train"``).

Each site gets ``round_timeout`` seconds (default: the study's timeout) to answer its task. A site
that fails — its agent dies, loses its connection or is late — is restarted (its agent started
again, greeted, set up and prepared as at the start of the run, and sent the same task) up to
``retries`` times. A site still without an answer is left out of this round; the app aggregates
those who answered if at least ``min_sites`` of the sampled ones did, else the run fails (with the
first site's own reason when none answered). A site that refuses for a reason of its own (its
data, its policy, an app error) is not retried: it would refuse again; an exception raised by the
plan counts as a failure. Every decision is logged (progress line, ``metrics.json`` under
``round_events``).

With ``secure = true`` a round takes four exchanges (keys, shares, masked, reveal), each with the
round's timeout. Only the first is retried: a restarted agent holds none of the round's secrets,
so a site lost at a later step is left out of the round (the survivors' shares remove its masks)
and restarted for the next round's first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from fedflow._version import __version__
from fedflow.errors import FedflowError, SiteError
from fedflow.wire import (
    PROTOCOL_VERSION,
    Hello,
    Message,
    Prepared,
    Ready,
    SecureKeys,
    Welcome,
)

__all__ = ["resilient_exchange"]


async def resilient_exchange(
    coordinator: Any, tasks: Mapping[str, Message], expect: type[Any]
) -> dict[str, Any]:
    """Ask every site its task with the round's timeout and retries; return the answers of the
    sites that gave one (study order). Raises a site's own refusal (data, policy, app error)."""
    params = coordinator.driver.params
    timeout = params.round_timeout or coordinator.timeout
    round_ = coordinator.driver.rounds
    events: list[dict[str, Any]] = coordinator.metrics.setdefault("round_events", [])
    errors: dict[str, FedflowError] = {}

    def log(site: str, what: str, detail: str) -> None:
        events.append({"round": round_, "site": site, "event": what, "detail": detail})
        coordinator.observer.message(f"round {round_}: site {site}: {what} ({detail})")

    # A secure round's later steps go to an agent that holds the round's secrets: a restarted
    # one has none, so a site lost after the first step is left out of the round (its masks are
    # removed with the survivors' shares) and restarted for the next round's first step.
    mid_secure = coordinator.driver.secure and expect is not SecureKeys
    attempts = 1 if mid_secure else params.retries + 1

    async def one(name: str, message: Message) -> Any:
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                if attempt > 0 or name in coordinator.lost:
                    await _restart(coordinator, name)
                    coordinator.lost.discard(name)
                    log(name, "restarted", f"attempt {attempt + 1} of {attempts}")
                async with asyncio.timeout(timeout):
                    return await coordinator._ask(name, message, expect)
            except TimeoutError:
                log(name, "timed out", f"no answer within {timeout:g} s")
                errors[name] = SiteError(f"no answer within {timeout:g} s", site=name)
            except SiteError as exc:
                log(name, "failed", exc.message)
                errors[name] = exc
            except FedflowError as exc:
                if exc.site is None:
                    exc.site = name
                raise  # the site refused: retrying would not change its answer
            finally:
                coordinator.metrics.setdefault("retry_seconds", 0.0)
                if attempt > 0:
                    coordinator.metrics["retry_seconds"] += time.perf_counter() - started
        coordinator.lost.add(name)
        with contextlib.suppress(Exception):
            await coordinator.sites[name].connector.close()
        log(name, "left out", f"after {attempts} attempt(s)")
        return None

    answers = await asyncio.gather(*(one(n, m) for n, m in tasks.items()))
    if all(a is None for a in answers):  # nobody answered: the first site's own reason
        raise errors[next(iter(tasks))]
    return {n: a for n, a in zip(tasks, answers, strict=True) if a is not None}


async def _restart(coordinator: Any, name: str) -> None:
    """Start the site's agent again and bring it to where it was: greeted, data set up, app
    prepared (the same messages as at the start of the run)."""
    site = coordinator.sites[name]
    with contextlib.suppress(Exception):
        await site.connector.close()
    await coordinator._start(site)
    hello = Hello(protocol=PROTOCOL_VERSION, version=__version__, site=name)
    await coordinator._ask(name, hello, Welcome)
    await coordinator._ask(name, coordinator.setups[name], Ready)
    prepared = await coordinator._ask(name, coordinator.prepare_message, Prepared)
    if site.rows_used is not None and prepared.rows != site.rows_used:
        raise SiteError(
            f"came back with {prepared.rows} rows instead of {site.rows_used}", site=name
        )
