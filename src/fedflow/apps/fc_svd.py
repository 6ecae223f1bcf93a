"""``federated-svd``: the native twin of FeatureCloud's federated SVD app
(``AnneHartebrodt/fc-federated-svd``, section ``fc_pca`` of its ``config.yaml``).

What the app computes (``apps/svd``: ``config.py``, ``TabData.py``, ``FC_Federated_PCA.py``,
``Aggregator_FC_Federated_PCA.py``, ``SVD.py``), and the twin with it:

- Each client reads ``input.data`` with ``pandas.read_csv(sep=input.delimiter, header=0,
  index_col=0)``: one **row per feature** (the first column names it), one **column per sample**
  (the header names them). Samples are what the clients split; features are shared by name.
- ``scaling.log_transform``: x → log2(x + 1). Each client counts per feature its NaN, ±inf and
  −inf values (−inf twice, as the app adds ``isnan + isneginf + isinf``); the coordinator keeps
  the features every client holds whose count over all samples is at most
  ``max_nan_fraction``.
- Means per feature: the sum of the non-NaN values over their number; variances: the sum of
  squared deviations over (that number − 1); the app sends sums, then sums of squares.
- ``center`` subtracts the means, ``variance`` divides by the standard deviations, then missing
  values become 0 (centred) or the feature's mean (not centred). ``highly_variable`` keeps the
  floor(p · ``perc_highly_var``) features of *lowest* standard deviation (the app's
  ``np.argsort(std)[0:hv]``), as the app does.
- The decomposition: the app sums the clients' Z·Zᵀ (features × features; Z the scaled data,
  features × samples) and takes the top k eigenvectors u of that sum / (N − 1), with k =
  min(``algorithm.pcs``, the coordinator client's number of samples, p − 1). Each client's
  G = Zᵀu (its samples × k) is orthonormalised across clients; the column norms are the
  singular values s of Z (``eigenvalues``). For more than 20·k features the app approximates
  the same subspace by randomised power iterations.
- Each client writes into ``output.dir`` (the twin: into the site's output folder itself, as
  the node agent writes no sub-folders): ``left_eigenvectors`` (u, features × k),
  ``right_eigenvectors`` (its rows of G = Zᵀu / s, samples × k), ``eigenvalues`` (s),
  ``explained_variance`` (s / Σ variances, as the app divides), ``projections`` (its Z·G,
  features × k), ``scaled_data`` (its Z), ``mean.tsv`` and ``std.tsv``, all with
  ``DataFrame.to_csv(sep=output.delimiter)``, and copies its config file to its output folder.

The twin: phase ``rows`` (``Empty`` → ``RowInfo``: the site's feature names, its per-feature
missing counts and its number of samples), ``sums`` and ``squares`` (summed), ``factor``
(``Scaling`` → ``Factor``: the triangular factor R of the site's scaled data, samples × features,
RᵀR = its Z·Zᵀ; the coordinator stacks them and takes the SVD, which gives u and s without
forming Z·Zᵀ, the tall-skinny QR of ``fedflow.apps.pca``) and ``write`` (summed, empty reply:
each site computes its G, projections and files). The decomposition is exact at every size (the
app's randomised iterations for more than 20·k features approximate it). Each component's sign is
fixed so its largest-|value| entry of u is positive (the app's sign is whatever ARPACK returns),
and features keep the order of the first site's file (the app's order is that of a Python set).

A site refuses to answer for fewer than ``min_samples`` samples (the study's ``min_count``: the
app's records are columns). What a site reveals: its feature names and missing counts, its
per-feature sums and sums of squares, and R (as much as its Z·Zᵀ, which the app sends itself).
The study loader (``fedflow.study.original``) reads the config file; this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedflow.apps._fc_csv import frame_csv
from fedflow.apps._merge_learning import r_factor, stack_factors
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
from fedflow.apps.pca import normalise_signs
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FCSVDParams", "FeatureCloudSVD", "missing_counts", "scale", "variance_select"]


class FCSVDParams(Params, frozen=True):
    """The app's ``fc_pca`` keys, as the study loader passes them (names as in the config)."""

    pcs: int = 10
    center: bool = True
    variance: bool = True
    highly_variable: bool = True
    perc_highly_var: float | None = 0.1
    log_transform: bool = True
    max_nan_fraction: float = 0.5
    output_dir: str = ""
    left_eigenvectors: str = "left_eigenvectors.tsv"
    right_eigenvectors: str = "right_eigenvectors.tsv"
    eigenvalues: str = "eigenvalues.tsv"
    explained_variance: str = "explained_variance.tsv"
    projections: str = "projections.tsv"
    scaled_data_file: str = "scaled_data.tsv"
    delimiter: str = "\t"
    """``output.delimiter``: the separator of the written files."""
    coordinator: str = ""
    """The site whose number of samples bounds k (the app's coordinator); "" = the first."""
    min_samples: int = 5
    """The fewest samples (columns) a site holds (the study's ``min_count``)."""
    config_name: str = "config.yaml"
    config_text: str = ""
    """The app's config file, copied to each site's output folder as the app does."""

    def __post_init__(self) -> None:
        if self.pcs < 1:
            raise ValueError("algorithm.pcs must be at least 1")
        if len(self.delimiter) != 1:
            raise ValueError(f"output.delimiter must be one character, got {self.delimiter!r}")
        if self.perc_highly_var is not None and not 0.0 <= self.perc_highly_var <= 1.0:
            raise ValueError("scaling.perc_highly_var must lie in [0, 1]")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.output_dir and not _plain(self.output_dir):
            raise ValueError(f"output.dir must be one plain folder name, got {self.output_dir!r}")
        for key in (
            "left_eigenvectors",
            "right_eigenvectors",
            "eigenvalues",
            "explained_variance",
            "projections",
            "scaled_data_file",
            "config_name",
        ):
            if not _plain(getattr(self, key)):
                raise ValueError(f"{key} must be a plain file name, got {getattr(self, key)!r}")


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


class RowInfo(Payload, frozen=True):
    names: list[str]
    missing: np.ndarray
    samples: int


class Selection(Payload, frozen=True):
    names: list[str]


class Sums(Payload, frozen=True):
    sums: np.ndarray


class Means(Payload, frozen=True):
    means: np.ndarray


class Squares(Payload, frozen=True):
    squares: np.ndarray


class Scaling(Payload, frozen=True):
    means: np.ndarray
    std: np.ndarray
    select: np.ndarray | None = None
    """Rows kept by ``highly_variable`` (indices into the selected features), or None."""


class Factor(Payload, frozen=True):
    r: np.ndarray


class Components(Payload, frozen=True):
    u: np.ndarray
    s: np.ndarray
    variances: np.ndarray
    means: np.ndarray
    std: np.ndarray


def missing_counts(x: np.ndarray) -> np.ndarray:
    """Per row, the app's count: NaN + (±inf) + (−inf), so −inf counts twice."""
    return (np.isnan(x).sum(axis=1) + np.isinf(x).sum(axis=1) + np.isneginf(x).sum(axis=1)).astype(
        np.int64
    )


def scale(x: np.ndarray, means: np.ndarray, std: np.ndarray, params: FCSVDParams) -> np.ndarray:
    """Return the app's scaled data (features × samples) from the log-transformed ``x``."""
    m = means.reshape(-1, 1)
    z = x - m if params.center else x.copy()
    if params.variance:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = z / std.reshape(-1, 1)
    if params.center:
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(np.isnan(z), m, z)


def variance_select(std: np.ndarray, params: FCSVDParams) -> np.ndarray | None:
    """The app's ``highly_variable`` rows: ``np.argsort(std)[0:floor(p · perc)]`` (lowest std)."""
    if not params.highly_variable:
        return None
    hv = (
        len(std)
        if params.perc_highly_var is None
        else int(np.floor(len(std) * params.perc_highly_var))
    )
    return np.argsort(std)[0:hv].astype(np.int64)


class FeatureCloudSVD(App[FCSVDParams]):
    """FeatureCloud federated-svd's twin: its scaling, the exact SVD, its output files."""

    name = "fc-federated-svd"
    Params = FCSVDParams
    reference = "numpy SVD of the pooled scaled data"
    phases = {
        "rows": Phase(Empty, RowInfo),
        "sums": Phase(Selection, Sums, summed=True),
        "squares": Phase(Means, Squares, summed=True),
        "factor": Phase(Scaling, Factor),
        "write": Phase(Components, Empty, summed=True),
    }
    secure = "the sites send their feature names and the factor of their scaled data"
    streaming = False  # the factor needs every sample of the site at once

    def columns(self, params: FCSVDParams) -> dict[str, ColumnKind]:
        return {}  # every column: the feature names, then one column per sample

    # -- site -----------------------------------------------------------------------------------
    def _matrix(
        self, data: Table, params: FCSVDParams, ctx: SiteContext
    ) -> tuple[list[str], np.ndarray]:
        columns = data.columns
        if len(columns) < 2:
            raise DataError(
                "federated-svd reads one row per feature: a first column naming it, then one "
                f"column per sample; the file has {len(columns)} column(s)"
            )
        text = [c for c in columns[1:] if not data.is_numeric(c)]
        if text:
            raise DataError(
                f"sample column '{text[0]}' holds text (federated-svd reads numbers after the "
                "first column, which names the features)",
                column=text[0],
            )
        check_min_count(len(columns) - 1, max(params.min_samples, 1), "the site's samples")
        names = [str(v) for v in np.asarray(data[columns[0]]).tolist()]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise DataError(
                    f"feature '{name}' is named twice in column '{columns[0]}'", column=columns[0]
                )
            seen.add(name)
        x = data.matrix(columns[1:]).astype(np.float64)
        if params.log_transform:
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.log2(x + 1)
        return names, x

    def local_rows(
        self, data: Table, params: FCSVDParams, request: Empty, ctx: SiteContext
    ) -> RowInfo:
        names, x = self._matrix(data, params, ctx)
        ctx.state.update(names=names, x=x)
        return RowInfo(names=names, missing=missing_counts(x), samples=x.shape[1])

    def local_sums(
        self, data: Table, params: FCSVDParams, request: Selection, ctx: SiteContext
    ) -> Sums:
        index = {n: i for i, n in enumerate(ctx.state["names"])}
        try:
            rows = np.array([index[n] for n in request.names], dtype=np.int64)
        except KeyError as exc:
            raise AppError(
                f"app '{self.name}': the coordinator selected unknown feature {exc}"
            ) from None
        x = ctx.state["x"][rows, :]
        ctx.state["x"] = x
        ctx.state["names"] = list(request.names)
        return Sums(sums=np.nansum(x, axis=1))

    def local_squares(
        self, data: Table, params: FCSVDParams, request: Means, ctx: SiteContext
    ) -> Squares:
        x = ctx.state["x"]
        return Squares(squares=np.nansum(np.square(x - request.means.reshape(-1, 1)), axis=1))

    def local_factor(
        self, data: Table, params: FCSVDParams, request: Scaling, ctx: SiteContext
    ) -> Factor:
        z = scale(ctx.state["x"], request.means, request.std, params)
        names = ctx.state["names"]
        if request.select is not None:
            z = z[request.select, :]
            names = [names[i] for i in request.select.tolist()]
        ctx.state.update(z=z, kept=names)
        return Factor(r=r_factor(z.T))

    def local_write(
        self, data: Table, params: FCSVDParams, request: Components, ctx: SiteContext
    ) -> Empty:
        z: np.ndarray = ctx.state["z"]
        u, s = request.u, request.s
        g = (z.T @ u) / s
        projections = z @ g
        samples = list(data.columns[1:])
        sep = params.delimiter
        k = u.shape[1]
        folder = ""  # the node agent writes a site's files into its folder, no sub-folders
        kept = ctx.state["kept"]
        out = ctx.outputs
        out[folder + params.left_eigenvectors] = frame_csv(range(k), u, sep=sep, index=kept)
        out[folder + params.right_eigenvectors] = frame_csv(range(k), g, sep=sep, index=samples)
        out[folder + params.eigenvalues] = frame_csv([0], s.reshape(-1, 1), sep=sep, header=False)
        varex = s / np.sum(request.variances)
        out[folder + params.explained_variance] = frame_csv(
            [0], varex.reshape(-1, 1), sep=sep, index=range(k)
        )
        out[folder + params.projections] = frame_csv(range(k), projections, sep=sep, index=kept)
        out[folder + params.scaled_data_file] = frame_csv(
            range(z.shape[1]), z, sep=sep, header=False
        )
        p = len(request.means)
        out[folder + "mean.tsv"] = frame_csv(
            [0], request.means.reshape(-1, 1), sep=sep, index=range(p)
        )
        out[folder + "std.tsv"] = frame_csv(
            [0], request.std.reshape(-1, 1), sep=sep, index=range(p)
        )
        if params.config_text:
            out[params.config_name] = params.config_text.encode()
        return Empty()

    # -- coordinator ----------------------------------------------------------------------------
    def aggregate_rows(
        self, replies: Mapping[str, RowInfo], params: FCSVDParams, ctx: CoordinatorContext
    ) -> Continue:
        order = [s for s in ctx.sites if s in replies]
        first = replies[params.coordinator] if params.coordinator in replies else replies[order[0]]
        common = set(first.names)
        missing: dict[str, int] = {}
        total = 0
        for site in order:
            reply = replies[site]
            if len(reply.missing) != len(reply.names):
                raise AppError(
                    f"app '{self.name}': site '{site}' sent {len(reply.names)} names and {len(reply.missing)} counts"
                )
            for name, count in zip(reply.names, reply.missing.tolist(), strict=True):
                missing[name] = missing.get(name, 0) + int(count)
            common &= set(reply.names)
            total += reply.samples
        names = [
            n for n in first.names if n in common and missing[n] / total <= params.max_nan_fraction
        ]
        if len(names) < 2:
            raise AppError(
                f"app '{self.name}': {len(names)} feature(s) are held by every site with at most "
                f"max_nan_fraction = {params.max_nan_fraction} missing; the SVD needs at least 2"
            )
        dropped = len(common) - len(names)
        if dropped:
            ctx.notes.append(
                f"federated-svd: {dropped} feature(s) held by every site left out for more than "
                f"max_nan_fraction = {params.max_nan_fraction} missing values"
            )
        if len(common) < len(first.names):
            ctx.notes.append(
                f"federated-svd: {len(first.names) - len(common)} feature(s) of the first site "
                "are missing at another site and left out, as the app intersects the row names"
            )
        coordinator = params.coordinator if params.coordinator in replies else order[0]
        ctx.state.update(
            names=names,
            values=np.array([total - missing[n] for n in names], dtype=np.float64),
            samples=total,
            k_bound=replies[coordinator].samples,
        )
        return Continue("sums", Selection(names=names))

    def aggregate_sums(
        self, replies: Mapping[str, Sums], params: FCSVDParams, ctx: CoordinatorContext
    ) -> Continue:
        sums = (
            replies[SUM].sums
            if ctx.secure
            else np.nansum(np.stack([r.sums for r in replies.values()]), axis=0)
        )
        means = sums / ctx.state["values"]
        ctx.state["means"] = means
        return Continue("squares", Means(means=means))

    def aggregate_squares(
        self, replies: Mapping[str, Squares], params: FCSVDParams, ctx: CoordinatorContext
    ) -> Continue:
        ssq = (
            replies[SUM].squares
            if ctx.secure
            else np.nansum(np.stack([r.squares for r in replies.values()]), axis=0)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            variances = ssq / (ctx.state["values"] - 1)
        std = np.sqrt(variances)
        select = variance_select(std, params)
        ctx.state.update(variances=variances, std=std, select=select)
        if params.variance and (std == 0).any():
            ctx.notes.append(
                f"federated-svd: {int((std == 0).sum())} feature(s) are constant; scaled to 0, "
                "as the app's division and imputation leave them"
            )
        return Continue("factor", Scaling(means=ctx.state["means"], std=std, select=select))

    def aggregate_factor(
        self, replies: Mapping[str, Factor], params: FCSVDParams, ctx: CoordinatorContext
    ) -> Continue:
        r = stack_factors([replies[s].r for s in ctx.sites if s in replies])
        p = r.shape[1]
        k = min(params.pcs, ctx.state["k_bound"], p - 1)
        if k < 1:
            raise AppError(f"app '{self.name}': {p} feature(s) leave no component (k = p − 1)")
        if k < params.pcs:
            ctx.notes.append(
                f"federated-svd: {k} component(s), not algorithm.pcs = {params.pcs}: the app "
                "keeps at most the coordinator's number of samples and the features − 1"
            )
        _, s, vt = np.linalg.svd(r, full_matrices=False)
        vt = normalise_signs(vt[:k])
        s = s[:k]
        if (s <= 0).any():
            raise AppError(f"app '{self.name}': the scaled data has rank below k = {k}")
        ctx.state.update(u=vt.T, s=s)
        return Continue(
            "write",
            Components(
                u=vt.T.copy(),
                s=s,
                variances=ctx.state["variances"],
                means=ctx.state["means"],
                std=ctx.state["std"],
            ),
        )

    def aggregate_write(
        self, replies: Mapping[str, Empty], params: FCSVDParams, ctx: CoordinatorContext
    ) -> Done:
        names = ctx.state["names"]
        select = ctx.state["select"]
        kept = names if select is None else [names[i] for i in select.tolist()]
        s = ctx.state["s"]
        u = ctx.state["u"]
        return Done(
            {
                "features": kept,
                "n_samples": ctx.state["samples"],
                "singular_values": s.tolist(),
                "explained_variance": (s / np.sum(ctx.state["variances"])).tolist(),
                "components": {n: u[i].tolist() for i, n in enumerate(kept)},
                "outputs_folder": params.output_dir,
            }
        )

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: FCSVDParams) -> dict[str, Any]:
        raise AppError(
            f"app '{self.name}': no pooled twin through --compare (sites hold different samples as "
            "columns, which fedflow pools as rows); tests/original checks it against numpy"
        )
