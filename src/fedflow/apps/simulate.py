"""Run an app over in-memory site tables, without processes or a wire: for tests and notebooks.

``simulate`` follows the same sequence as the runtime (parse, resolve against the common columns,
start, local at every site, aggregate, repeat) so an app can be checked against its centralized
twin in microseconds. ``relay`` lets a caller pass every payload through the wire codec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedflow.apps import get_app
from fedflow.apps.base import (
    App,
    Continue,
    CoordinatorContext,
    Done,
    Payload,
    SiteContext,
    SiteInfo,
    Table,
    check_columns,
    merged_columns,
)
from fedflow.errors import AppError, DataError

__all__ = ["Simulation", "column_kinds", "simulate"]


@dataclass
class Simulation:
    """What ``simulate`` returns: the final step, the parameters used, the rounds, the notes."""

    done: Done
    params: Any
    rounds: int
    notes: list[str]
    site_outputs: dict[str, dict[str, bytes]]

    @property
    def result(self) -> dict[str, Any]:
        """The app's result dict."""
        return self.done.result


def column_kinds(table: Table) -> dict[str, str]:
    """Return ``{column: "int" | "float" | "str"}`` for a table, as the handshake reports it."""
    kinds = {}
    for name in table.columns:
        kind = table[name].dtype.kind
        kinds[name] = "int" if kind in "biu" else "float" if kind == "f" else "str"
    return kinds


def simulate(
    app: App[Any] | str,
    params: Mapping[str, Any] | None,
    sites: Mapping[str, Table],
    *,
    seed: int | None = None,
    min_count: int = 5,
    max_rounds: int = 10_000,
    relay: Callable[[Payload], Payload] | None = None,
) -> Simulation:
    """Run ``app`` on ``sites`` (name -> Table) and return the final step.

    Raises AppError or DataError as the runtime would (named by site where a site raised).
    """
    if isinstance(app, str):
        app = get_app(app)
    parsed = app.parse_params(params)
    infos = {name: SiteInfo(name, t.n_rows, column_kinds(t)) for name, t in sites.items()}
    if not infos:
        raise AppError("no sites")
    common = merged_columns(infos)
    parsed = app.resolve(parsed, common)
    needed = app.columns(parsed)
    # parameters travel to the sites as builtins and are parsed again there, as on the wire
    wire_params = app.params_to_dict(parsed)
    site_params = app.parse_params(wire_params)
    site_ctx = {name: SiteContext(site=name, seed=seed, min_count=min_count) for name in sites}
    for name, table in sites.items():
        try:
            check_columns(table, needed, min_count=min_count, where="its data")
        except DataError as exc:
            exc.site = name
            raise
    ctx = CoordinatorContext(sites=infos, seed=seed, min_count=min_count)
    step = app.start(parsed, ctx)
    relay = relay or (lambda p: p)
    while isinstance(step, Continue):
        if ctx.round >= max_rounds:
            raise AppError(f"app '{app.name}' did not finish within {max_rounds} rounds")
        ctx.round += 1
        replies: dict[str, Payload] = {}
        for name, table in sites.items():
            payload = relay((step.per_site or {}).get(name, step.payload))
            site_ctx[name].round = ctx.round
            try:
                replies[name] = relay(app.local(table, site_params, payload, site_ctx[name]))
            except DataError as exc:
                exc.site = exc.site or name
                raise
        step = app.aggregate(replies, parsed, ctx)
    return Simulation(
        done=step,
        params=parsed,
        rounds=ctx.round,
        notes=ctx.notes,
        site_outputs={name: c.outputs for name, c in site_ctx.items() if c.outputs},
    )
