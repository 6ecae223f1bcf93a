"""``mean-app``: the native twin of FeatureCloud's mean app (``FeatureCloud/fc-mean-template``).

The FeatureCloud app reads ``input_name`` (from its ``config.yml``, section ``fc_mean``) with
``pandas.read_csv(path, header=None)``; each client's *local mean* is the sum of every value in
the file divided by the file's number of columns; the coordinator's *global mean* is the
unweighted average of the local means; every client writes ``str(global_mean)`` to
``output_name`` and copies ``config.yml`` to its output folder. For the app's own example (one
line of values per client, equally many at every client) the global mean is the mean of all
values pooled.

This twin computes exactly that, in two phases. Phase ``sums`` (request ``Empty``, reply
``SiteSums``): each site sends the sum of its values, their number, its number of columns and its
local mean.
Phase ``write`` (request ``GlobalMean``, reply ``Empty``): the coordinator sends the global mean;
each site puts ``output_name`` (and ``config.yml``) into ``SiteContext.outputs``, which the node
agent writes to the site's output folder (``sites/<site>/`` of the run directory at a local
site), as the app writes ``/mnt/output``. The result holds the app's ``mean`` and the pooled
mean of all values (``pooled_mean``), which ``--compare`` checks against numpy on the pooled
files; a note says when the two differ (sites of unequal shape).

A site sums its values batch by batch (``Table.batches``) and exactly (one rounding at the end).
Both phases are summed, so the twin runs under ``secure = true``: the coordinator then learns only
the sums over sites of each reply's fields (Σ sums, Σ values, Σ columns and Σ local means, which
give the app's global mean as Σ local means / number of sites), no site's own.

The study loader (``fedflow.study.original``) reads ``config.yml`` and passes its keys as
parameters; this module does no I/O. A site refuses to answer for fewer than ``min_values``
values (the study's ``min_count``: the app's records are values, not lines).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from fedflow.apps._merge import exact_power_sums, exact_to_float
from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Table,
    check_min_count,
)
from fedflow.errors import DataError

__all__ = ["FeatureCloudMean", "MeanAppParams"]


class MeanAppParams(Params, frozen=True):
    output_name: str = "output.csv"
    """The file each site writes the global mean to (``fc_mean.output_name``)."""
    config_yml: str = ""
    """The app's ``config.yml`` text, copied to each site's output folder as the app does."""
    min_values: int = 5
    """The fewest values a site sums (the study's ``min_count``)."""

    def __post_init__(self) -> None:
        name = self.output_name
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"output_name must be a plain file name, got {name!r}")
        if name == "config.yml":
            raise ValueError("output_name may not be config.yml (the app copies its config there)")
        if self.min_values < 1:
            raise ValueError("min_values must be at least 1")


class SiteSums(Payload, frozen=True):
    """A site's sum of values, their number, its number of columns and its *local mean* (the
    sum over the number of columns, as the app computes it): each a sum over sites is enough."""

    total: float
    values: int
    columns: int
    local_mean: float


class GlobalMean(Payload, frozen=True):
    mean: float


class FeatureCloudMean(App[MeanAppParams]):
    """FeatureCloud mean-app's twin: the global mean of headerless values, written to output.csv."""

    name = "mean-app"
    Params = MeanAppParams
    reference = "numpy mean"
    phases = {
        "sums": Phase(Empty, SiteSums, summed=True),
        "write": Phase(GlobalMean, Empty, summed=True),
    }
    secure = True
    streaming = True

    def columns(self, params: MeanAppParams) -> dict[str, ColumnKind]:
        return {}  # every column of the file, as the app reads them all

    # phase 1: each site's sum, count of values and number of columns
    def local_sums(
        self, data: Table, params: MeanAppParams, request: Empty, ctx: SiteContext
    ) -> SiteSums:
        text = [c for c in data.columns if not data.is_numeric(c)]
        if text:
            raise DataError(
                f"mean-app sums numbers, but column {text[0]} holds text", column=text[0]
            )
        values = data.n_rows * len(data.columns)
        check_min_count(values, max(ctx.min_count, params.min_values), "the site's values")
        exact = Fraction(0)  # the sum of the finite values without rounding, rounded once below
        other = 0.0  # inf / nan, as a float sum gives them
        for batch in data.batches(data.columns):
            for column in data.columns:
                x = np.asarray(batch[column], dtype=np.float64)
                finite = np.isfinite(x)
                exact += exact_power_sums(x[finite], 1)[0]
                other += float(x[~finite].sum())
        return SiteSums(
            total=exact_to_float(exact) + other,
            values=values,
            columns=len(data.columns),
            local_mean=exact_to_float(exact / len(data.columns)) + other,
        )

    def aggregate_sums(
        self, replies: Mapping[str, SiteSums], params: MeanAppParams, ctx: CoordinatorContext
    ) -> Continue:
        if ctx.secure:  # only the sum over sites: Σ local means, Σ totals, Σ values
            summed = replies[SUM]
            sites = len(ctx.sites)
            mean = summed.local_mean / sites
            n = summed.values
            pooled = summed.total / n
        else:
            local_means = [r.total / r.columns for r in replies.values()]
            mean = float(np.sum(local_means) / len(local_means))  # the app's formula, as it is
            n = sum(r.values for r in replies.values())
            pooled = sum(r.total for r in replies.values()) / n
            sites = len(replies)
        ctx.state.update(mean=mean, pooled_mean=pooled, values=n, sites=sites)
        if not np.isclose(mean, pooled, rtol=1e-12, atol=0.0):
            ctx.notes.append(
                f"mean-app's global mean ({mean:g}) averages the sites' local means unweighted, "
                f"each a site's sum over its number of columns, as the FeatureCloud app does; "
                f"the mean of all {n} values pooled is {pooled:g}"
            )
        return Continue("write", GlobalMean(mean=mean))

    # phase 2: every site writes the global mean, as the app does
    def local_write(
        self, data: Table, params: MeanAppParams, request: GlobalMean, ctx: SiteContext
    ) -> Empty:
        ctx.outputs[params.output_name] = str(np.float64(request.mean)).encode()
        if params.config_yml:
            ctx.outputs["config.yml"] = params.config_yml.encode()
        return Empty()

    def aggregate_write(
        self, replies: Mapping[str, Empty], params: MeanAppParams, ctx: CoordinatorContext
    ) -> Done:
        state = ctx.state
        return Done(
            {
                "mean": state["mean"],
                "pooled_mean": state["pooled_mean"],
                "values": state["values"],
                "sites": state["sites"],
                "output_name": params.output_name,
            }
        )

    def centralized(self, pooled: Any, params: MeanAppParams) -> dict[str, Any]:
        values = pooled.to_numpy(dtype=np.float64).ravel()
        values = values[~np.isnan(values)]  # sites of different widths pool with gaps
        return {"pooled_mean": float(np.mean(values)), "values": int(values.size)}

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"pooled_mean": result["pooled_mean"], "values": result["values"]}
