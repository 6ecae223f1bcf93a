"""``random-forest``: every site grows trees on its own rows; the forest is the union of them all.

Phases (the approach of FeatureCloud's random-forest app, with federated metrics added):

1. ``labels`` (classification only; ``Empty`` → ``Labels``): each site sends the set of target
   labels it holds (not their counts); the coordinator sorts their union into the global class
   order, so every tree outputs probability vectors over the same classes.
2. ``grow`` (``GrowRequest`` → ``Grown``): each site grows its share of ``n_estimators`` (shares
   proportional to the sites' row counts, at least one tree per site) with the numpy CART of
   ``_trees`` on bootstrap samples of its rows (or on all of them, ``bootstrap = false``), and
   sends the trees as arrays (feature indices, thresholds, children, node values, importances).
3. ``score`` (``ScoreRequest`` → ``Scores``): the coordinator sends the whole forest back; each site
   scores its own rows with it and returns aggregates only: correct-prediction counts, or the sum
   of squared errors and the target's count, mean and sum of squared deviations; for a binary
   target, score histograms (below). It also scores each row with the trees that did not see it
   (the other sites' trees and its own trees whose bootstrap sample left the row out): the
   forest's out-of-bag (OOB) metrics.

What a site reveals, and the privacy rule for trees: a leaf never describes fewer than
``max(min_samples_leaf, min_count)`` distinct rows of the site (a node is split only when both
children keep that many), so every leaf value — class proportions or a mean — is an aggregate over
at least ``min_count`` records. It does **not** hide the thresholds: each one is the midpoint
between two adjacent observed values of a feature, so the trees disclose (approximately) some
feature values present at the site, and the label phase discloses which labels a site holds. The
score histograms for the AUC are merged at the site into blocks of at least ``min_count`` rows.

Tolerance against the twin (scikit-learn ``RandomForestClassifier`` / ``RandomForestRegressor``
with ``oob_score = True`` on the pooled rows with the same settings, its own out-of-bag estimates):
the federated forest is a different forest — each tree sees one site's rows, drawn from another
random stream — so only its quality is compared, out of bag: ``oob_accuracy``, ``oob_auc``
(binary) and ``oob_r2`` agree within 0.1 absolute (``tolerances``; no relative part), and what
must be identical is compared exactly: ``task``, ``features``, ``classes``, ``n_trees``, ``n_obs``.
Measured with 30 trees on breast_cancer, wine, iris and diabetes split into 3 and 7 sites, IID and
unbalanced, seeds 0–9: worst difference 0.080 (wine and iris accuracy), 0.066 (diabetes R²), 0.010
(breast_cancer AUC). Training metrics are reported but not compared: the pooled forest fits every
row with every tree, the federated one with its site's.

Neither streaming nor secure aggregation (``streaming = False``, ``secure`` is the reason why
not): growing a tree draws bootstrap samples of the site's rows and searches every split over
all the rows of a node, so a site holds the needed columns in memory (its ``memory_limit``
refuses the app beforehand when they would not fit); and what a site sends — trees, label sets —
is not a sum over sites that secure aggregation could add up.

A finished run saves the forest as ``forest.json``; ``RandomForest.load_model`` reads it back for
``fedflow predict`` (``fedflow.results.predict``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np

from fedflow.apps._merge import combine_moments
from fedflow.apps._trees import Forest, Tree, bootstrap_weights, grow_tree
from fedflow.apps.base import (
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
    Step,
    Table,
    check_min_count,
    check_unique,
    named,
    numeric_columns,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AUC_BINS",
    "FOREST_FORMAT",
    "MODEL_FILE",
    "AucBlocks",
    "ClassFit",
    "ForestModel",
    "ForestParams",
    "GrowRequest",
    "Grown",
    "Labels",
    "RandomForest",
    "RegressionFit",
    "ScoreRequest",
    "Scores",
    "TreeArrays",
    "allocate_trees",
    "auc_from_blocks",
    "decode_forest",
    "encode_forest",
    "merge_labels",
    "resolve_max_features",
    "score_blocks",
]

FOREST_FORMAT = "fedflow-forest"
FOREST_VERSION = 1
MODEL_FILE = "forest.json"
"""The run-directory file holding the saved forest."""
AUC_BINS = 1000
"""Resolution of the score grid the AUC is computed on (bins of width 1/1000)."""

Task = Literal["classification", "regression"]


class ForestParams(Params, frozen=True):
    """Parameters of ``random-forest`` (defaults in docs/apps/random-forest.md)."""

    target: str
    features: list[str] | None = None
    task: Task | None = None
    n_estimators: int = 100
    max_depth: int | None = 8
    min_samples_leaf: int = 5
    max_features: int | float | str | None = None
    bootstrap: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.features is not None:
            if not self.features:
                raise ValueError("features is empty")
            if self.target in self.features:
                raise ValueError(f"the target '{self.target}' is also listed in features")
            check_unique(self.features, "features")
        if self.n_estimators < 1:
            raise ValueError("n_estimators must be at least 1")
        if self.max_depth is not None and self.max_depth < 1:
            raise ValueError("max_depth must be at least 1 (or left out for no limit)")
        if self.min_samples_leaf < 1:
            raise ValueError("min_samples_leaf must be at least 1")
        m = self.max_features
        if isinstance(m, str) and m not in ("sqrt", "log2", "all"):
            raise ValueError(f"max_features '{m}' is not 'sqrt', 'log2', 'all' or a number")
        if isinstance(m, bool):
            raise ValueError("max_features must be 'sqrt', 'log2', 'all' or a number")
        if isinstance(m, int) and m < 1:
            raise ValueError("max_features must be at least 1")
        if isinstance(m, float) and not 0.0 < m <= 1.0:
            raise ValueError("max_features as a fraction must lie in (0, 1]")


# --- phase payloads ------------------------------------------------------------------------------
class Labels(Payload, frozen=True):
    """``labels`` reply: the distinct target labels a site holds (int64 codes or text), no counts."""

    labels: np.ndarray


class GrowRequest(Payload, frozen=True):
    """``grow`` request: the forest's seed, this site's number of trees, the global class order."""

    seed: int
    n_trees: int
    classes: np.ndarray | None = None
    """The sorted labels of all sites (classification); None for regression."""


class TreeArrays(Payload, frozen=True):
    """Trees as concatenated arrays (``_trees`` describes each array); ``node_counts`` says how
    many nodes each tree holds, in order."""

    node_counts: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


class Grown(TreeArrays, frozen=True):
    """``grow`` reply: a site's trees and each tree's normalised feature importances
    (trees × features)."""

    importances: np.ndarray


class ScoreRequest(Payload, frozen=True):
    """``score`` request: the whole forest and where this site's own trees lie in it
    (``own = [start, stop)``), so the site can leave out the trees that saw a row."""

    forest: TreeArrays
    own: list[int]


class AucBlocks(Payload, frozen=True):
    """A site's score histogram for the AUC, in blocks of ≥ ``min_count`` rows (``score_blocks``)."""

    edges: np.ndarray
    negative: np.ndarray
    positive: np.ndarray


class ClassFit(Payload, frozen=True, tag="classification"):
    """A site's aggregates of class predictions: correct ones, and (binary) the score histogram."""

    correct: int
    auc_blocks: AucBlocks | None = None


class RegressionFit(Payload, frozen=True, tag="regression"):
    """A site's aggregates of predicted values: the sum of squared errors, and the target's mean
    and sum of squared deviations (merged with Chan's formula for R²)."""

    sse: float
    y_mean: float
    y_m2: float


class Scores(Payload, frozen=True):
    """``score`` reply: the site's rows scored by the whole forest (``fit`` over ``n`` rows) and out
    of bag (``oob`` over ``oob_n`` rows; None, with ``oob_n = 0``, when fewer than ``min_count``
    rows have a tree that did not see them)."""

    n: int
    fit: ClassFit | RegressionFit
    oob_n: int
    oob: ClassFit | RegressionFit | None = None


# --- pure helpers (each unit-tested) ------------------------------------------------------------
def resolve_max_features(value: int | float | str | None, n_features: int, task: str) -> int:
    """Return how many features each split draws (scikit-learn's rules and defaults).

    None means ``sqrt`` for classification and all features for regression. Raises ValueError
    when an integer exceeds ``n_features``.
    """
    if value is None:
        value = "sqrt" if task == "classification" else "all"
    if value == "all":
        return n_features
    if value == "sqrt":
        return max(1, int(math.sqrt(n_features)))
    if value == "log2":
        return max(1, int(math.log2(n_features)))
    if isinstance(value, float):
        return max(1, int(value * n_features))
    if isinstance(value, int):
        if value > n_features:
            raise ValueError(f"max_features = {value} exceeds the {n_features} features")
        return value
    raise ValueError(f"max_features {value!r} is not understood")


def allocate_trees(total: int, rows: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` trees across sites in proportion to their rows (largest remainders).

    Every site grows at least one tree; raises ValueError when ``total`` < the number of sites.
    """
    names = list(rows)
    if total < len(names):
        raise ValueError(
            f"n_estimators = {total} is fewer than the {len(names)} sites; "
            "every site grows at least one tree"
        )
    n = np.array([max(int(rows[s]), 0) for s in names], dtype=np.float64)
    share = np.full(len(names), 1.0)  # one tree each, the rest by rows
    spare = total - len(names)
    exact = spare * n / n.sum() if n.sum() > 0 else np.full(len(names), spare / len(names))
    base = np.floor(exact)
    left = int(spare - base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:left]] += 1
    share += base
    return {s: int(k) for s, k in zip(names, share, strict=True)}


def merge_labels(label_sets: Sequence[np.ndarray]) -> list[int] | list[str]:
    """Return the sorted union of the sites' labels: ints when every site sent ints, else text."""
    if any(np.asarray(a).dtype.kind == "U" for a in label_sets):
        return sorted({str(v) for a in label_sets for v in np.asarray(a).astype(str).tolist()})
    return sorted({int(v) for a in label_sets for v in np.asarray(a).tolist()})


def score_blocks(
    scores: np.ndarray, positive: np.ndarray, min_count: int, bins: int = AUC_BINS
) -> dict[str, np.ndarray]:
    """Return a site's score histogram for the AUC, merged into blocks of ≥ ``min_count`` rows.

    ``scores`` (probability of the positive class, in [0, 1]) fall into ``bins`` equal bins;
    consecutive bins are merged from the left until a block holds ``min_count`` rows (a short last
    block joins the one before). Returns ``edges`` (block starts and the final end, in bins) and
    the ``negative`` and ``positive`` counts per block.
    """
    index = np.minimum((np.clip(scores, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    neg = np.bincount(index[~positive], minlength=bins).astype(np.float64)
    pos = np.bincount(index[positive], minlength=bins).astype(np.float64)
    starts: list[int] = []
    total = 0.0
    for b in np.flatnonzero(neg + pos):
        if not starts or total >= min_count:
            starts.append(int(b))
            total = 0.0
        total += neg[b] + pos[b]
    if len(starts) > 1 and total < min_count:
        starts.pop()
    if not starts:
        starts = [0]
    starts[0] = 0
    edges = np.array([*starts, bins], dtype=np.int64)
    return {
        "edges": edges,
        "negative": np.add.reduceat(neg, edges[:-1]),
        "positive": np.add.reduceat(pos, edges[:-1]),
    }


def auc_from_blocks(blocks: Sequence[Mapping[str, np.ndarray]], bins: int = AUC_BINS) -> float:
    """Return the AUC of the pooled score histograms (NaN when a class is absent).

    Each block's counts are spread evenly over its bins; a positive beats every negative in a
    lower bin and ties (half) with those in its own bin, as the Mann–Whitney statistic counts ties.
    """
    neg = np.zeros(bins)
    pos = np.zeros(bins)
    for block in blocks:
        edges = np.asarray(block["edges"], dtype=np.int64)
        widths = np.diff(edges)
        if edges[0] != 0 or edges[-1] != bins or (widths <= 0).any():
            raise ValueError("score blocks do not cover the score grid")
        neg += np.repeat(np.asarray(block["negative"], dtype=np.float64) / widths, widths)
        pos += np.repeat(np.asarray(block["positive"], dtype=np.float64) / widths, widths)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return math.nan
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_neg * n_pos))


def _site_rng(seed: int, site: str) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(site.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, key])


def _arrays(trees: Sequence[Tree]) -> dict[str, np.ndarray]:
    return {
        "node_counts": np.array([t.n_nodes for t in trees], dtype=np.int64),
        "feature": np.concatenate([t.feature for t in trees]),
        "threshold": np.concatenate([t.threshold for t in trees]),
        "left": np.concatenate([t.left for t in trees]),
        "right": np.concatenate([t.right for t in trees]),
        "value": np.vstack([t.value for t in trees]),
    }


def _pack(trees: Sequence[Tree]) -> Grown:
    """Return a site's trees as its ``grow`` reply."""
    return Grown(**_arrays(trees), importances=np.vstack([t.importances for t in trees]))


def _unpack(
    packed: TreeArrays, n_features: int, importances: np.ndarray | None = None
) -> list[Tree]:
    """Return the trees of a packed payload; raise ValueError when malformed."""
    counts = np.asarray(packed.node_counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 1).any():
        raise ValueError("node_counts must list positive node counts")
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    arrays = {
        "feature": packed.feature,
        "threshold": packed.threshold,
        "left": packed.left,
        "right": packed.right,
        "value": packed.value,
    }
    for k, a in arrays.items():
        if len(a) != total:
            raise ValueError(f"'{k}' holds {len(a)} nodes, node_counts add up to {total}")
    if importances is None:
        importances = np.zeros((len(counts), n_features))
    if importances.shape != (len(counts), n_features):
        raise ValueError(f"'importances' has shape {importances.shape}")
    trees = []
    for i, (a, b) in enumerate(zip(ends - counts, ends, strict=True)):
        trees.append(
            Tree(
                feature=arrays["feature"][a:b].astype(np.int64),
                threshold=arrays["threshold"][a:b].astype(np.float64),
                left=arrays["left"][a:b].astype(np.int64),
                right=arrays["right"][a:b].astype(np.int64),
                value=np.atleast_2d(arrays["value"][a:b].astype(np.float64)),
                importances=importances[i].astype(np.float64),
            )
        )
    return trees


def _site_labels(column: np.ndarray, name: str) -> np.ndarray:
    """Return a site's target as int64 codes or fixed-width text; DataError for fractions."""
    if column.dtype.kind in "biu":
        return column.astype(np.int64)
    if column.dtype.kind == "f":
        if not np.isfinite(column).all():
            raise DataError(f"target column '{name}' holds missing values", column=name)
        if (column != np.round(column)).any():
            raise DataError(
                f"target column '{name}' holds fractional numbers: classification needs integer "
                "codes or text labels (set task = 'regression' for a numeric target)",
                column=name,
            )
        return column.astype(np.int64)
    return np.asarray(column).astype(str)


def _feature_matrix(data: Table, features: Sequence[str]) -> np.ndarray:
    x = data.matrix(features)
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        column = features[int(np.flatnonzero(bad)[0])]
        raise DataError(f"column '{column}' holds missing or infinite values", column=column)
    return x


# --- the model file ----------------------------------------------------------------------------
class _TreeRecord(msgspec.Struct):
    site: str
    feature: list[int]
    threshold: list[float]
    left: list[int]
    right: list[int]
    value: list[list[float]]


class _ForestFile(msgspec.Struct):
    format: str
    version: int
    task: Task
    target: str
    features: list[str]
    trees: list[_TreeRecord]
    classes: list[int | str] | None = None


@dataclass(frozen=True)
class ForestModel:
    """A saved forest: what it predicts, from which features, and the trees."""

    task: str
    target: str
    features: list[str]
    classes: list[int] | list[str] | None
    forest: Forest
    sites: list[str]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return class probabilities (rows × classes) or predicted values (rows,)."""
        mean, _ = self.forest.predict(x)
        return mean if self.task == "classification" else mean[:, 0]

    def predict_columns(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Return the named prediction columns for the rows of ``x`` (``fedflow predict``):
        ``prediction`` (the class with the highest mean probability, as an integer when every
        class is one, or the mean value) and, for classification, ``probability_<class>``."""
        output = self.predict(x)
        if self.task != "classification":
            return {"prediction": output}
        classes = list(self.classes or [])
        labels = np.array(classes, dtype=object)[output.argmax(axis=1)]
        columns: dict[str, np.ndarray] = {
            "prediction": labels.astype(np.int64)
            if all(isinstance(c, int) for c in classes)
            else labels
        }
        for j, label in enumerate(classes):
            columns[f"probability_{label}"] = output[:, j]
        return columns


def encode_forest(model: ForestModel, trees: Sequence[Tree]) -> bytes:
    """Return the ``forest.json`` bytes of a model (format in docs/apps/random-forest.md)."""
    doc = {
        "format": FOREST_FORMAT,
        "version": FOREST_VERSION,
        "task": model.task,
        "target": model.target,
        "features": list(model.features),
        "classes": list(model.classes) if model.classes is not None else None,
        "trees": [
            {
                "site": site,
                "feature": t.feature.tolist(),
                "threshold": t.threshold.tolist(),
                "left": t.left.tolist(),
                "right": t.right.tolist(),
                "value": t.value.tolist(),
            }
            for site, t in zip(model.sites, trees, strict=True)
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def decode_forest(content: bytes, source: str = "forest.json") -> ForestModel:
    """Return the model held in ``forest.json`` bytes; raise DataError naming ``source``."""
    try:
        doc = msgspec.json.decode(content, type=_ForestFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DataError(f"{source}: not a fedflow forest file: {exc}", file=source) from None
    if doc.format != FOREST_FORMAT or doc.version != FOREST_VERSION:
        raise DataError(
            f"{source}: format {doc.format!r} version {doc.version} is not "
            f"{FOREST_FORMAT!r} version {FOREST_VERSION}",
            file=source,
        )
    classes: list[int] | list[str] | None = None
    n_outputs = 1
    if doc.task == "classification":
        if not doc.classes or len({type(c) for c in doc.classes}) != 1:
            raise DataError(f"{source}: 'classes' must list labels of one type", file=source)
        classes = list(doc.classes)  # type: ignore[assignment]
        n_outputs = len(doc.classes)
    try:
        trees = [
            Tree(
                feature=np.asarray(t.feature, dtype=np.int64),
                threshold=np.asarray(t.threshold, dtype=np.float64),
                left=np.asarray(t.left, dtype=np.int64),
                right=np.asarray(t.right, dtype=np.int64),
                value=np.asarray(t.value, dtype=np.float64).reshape(len(t.value), -1),
                importances=np.zeros(len(doc.features)),
            )
            for t in doc.trees
        ]
        for i, tree in enumerate(trees):
            if tree.value.shape[1] != n_outputs:
                raise ValueError(
                    f"tree {i} has {tree.value.shape[1]} outputs, expected {n_outputs}"
                )
        forest = Forest(trees, len(doc.features))
    except ValueError as exc:
        raise DataError(f"{source}: {exc}", file=source) from None
    return ForestModel(
        doc.task, doc.target, list(doc.features), classes, forest, [t.site for t in doc.trees]
    )


# --- the app -----------------------------------------------------------------------------------
OOB_RULE = (0.0, 0.1)
"""The rule ``--compare`` applies to the out-of-bag metrics: (rtol, atol) = within 0.1 absolute."""


class RandomForest(App[ForestParams]):
    """A random forest grown site by site; tolerance against scikit-learn in the module docstring."""

    name = "random-forest"
    reference = "scikit-learn RandomForest"
    Params = ForestParams
    secure = (
        "the sites send trees (splits and leaf values) grown on their own rows, which are not "
        "sums over sites"
    )
    streaming = False  # bootstrap samples and split searches need every row of the site at once
    phases = {
        "labels": Phase(Empty, Labels),
        "grow": Phase(GrowRequest, Grown),
        "score": Phase(ScoreRequest, Scores),
    }
    # the exact keys (task, features, classes, n_trees, n_obs) use the default rule
    tolerances = {"oob_accuracy": OOB_RULE, "oob_auc": OOB_RULE, "oob_r2": OOB_RULE}

    def resolve(self, params: ForestParams, columns: Mapping[str, str]) -> ForestParams:
        target_kind = columns.get(params.target)
        if target_kind is None:
            raise AppError(
                f"app '{self.name}': target column '{params.target}' is not in the sites' data"
            )
        task = params.task or ("regression" if target_kind == "float" else "classification")
        if task == "regression" and target_kind == "str":
            raise AppError(
                f"app '{self.name}': target column '{params.target}' is text; regression needs numbers"
            )
        features = params.features
        if features is None:
            features = numeric_columns(columns, exclude=[params.target])
            if not features:
                raise AppError(
                    f"app '{self.name}': the data has no numeric column besides '{params.target}'"
                )
        try:
            max_features = resolve_max_features(params.max_features, len(features), task)
        except ValueError as exc:
            raise AppError(f"app '{self.name}': {exc}") from None
        return msgspec.structs.replace(
            params, task=task, features=features, max_features=max_features
        )

    def columns(self, params: ForestParams) -> dict[str, ColumnKind]:
        needed: dict[str, ColumnKind] = {
            params.target: "numeric" if params.task == "regression" else "any"
        }
        needed.update({f: "numeric" for f in params.features or []})
        return needed

    # -- coordinator ----------------------------------------------------------------------------
    def start(self, params: ForestParams, ctx: CoordinatorContext) -> Step:
        seed = params.seed if params.seed is not None else ctx.seed if ctx.seed is not None else 0
        try:
            shares = allocate_trees(params.n_estimators, {n: s.rows for n, s in ctx.sites.items()})
        except ValueError as exc:
            raise AppError(f"app '{self.name}': {exc}") from None
        ctx.state.update(seed=int(seed), shares=shares, classes=None)
        if params.task == "regression":
            return self._grow(ctx)
        return Continue("labels", Empty())

    def aggregate_labels(
        self, replies: Mapping[str, Labels], params: ForestParams, ctx: CoordinatorContext
    ) -> Continue:
        classes = merge_labels([r.labels for r in replies.values()])
        if len(classes) < 2:
            raise AppError(
                f"app '{self.name}': the target '{params.target}' has a single class "
                f"({classes[0] if classes else 'none'}) across all sites"
            )
        if len(classes) > 20 and isinstance(classes[0], int):
            ctx.notes.append(
                f"random-forest: the target '{params.target}' has {len(classes)} integer "
                "classes; set task = 'regression' if it is a quantity, not a label"
            )
        ctx.state["classes"] = classes
        return self._grow(ctx)

    def _grow(self, ctx: CoordinatorContext) -> Continue:
        seed: int = ctx.state["seed"]
        classes = ctx.state["classes"]
        common = GrowRequest(
            seed=seed, n_trees=0, classes=None if classes is None else np.asarray(classes)
        )
        shares: dict[str, int] = ctx.state["shares"]
        return Continue(
            "grow",
            common,
            per_site={s: msgspec.structs.replace(common, n_trees=k) for s, k in shares.items()},
        )

    def aggregate_grow(
        self, replies: Mapping[str, Grown], params: ForestParams, ctx: CoordinatorContext
    ) -> Continue:
        features = params.features or []
        n_outputs = len(ctx.state["classes"]) if params.task == "classification" else 1
        trees: list[Tree] = []
        owners: list[str] = []
        ranges: dict[str, list[int]] = {}
        for site, reply in replies.items():
            try:
                site_trees = _unpack(reply, len(features), np.asarray(reply.importances))
                Forest(site_trees, len(features))
                if any(t.value.shape[1] != n_outputs for t in site_trees):
                    raise ValueError(f"trees must have {n_outputs} outputs")
            except ValueError as exc:
                raise AppError(
                    f"app '{self.name}': site '{site}' sent malformed trees: {exc}"
                ) from None
            ranges[site] = [len(trees), len(trees) + len(site_trees)]
            trees.extend(site_trees)
            owners.extend([site] * len(site_trees))
        ctx.state.update(trees=trees, owners=owners)
        forest = TreeArrays(**_arrays(trees))
        return Continue(
            "score",
            ScoreRequest(forest=forest, own=[0, 0]),
            per_site={s: ScoreRequest(forest=forest, own=r) for s, r in ranges.items()},
        )

    def aggregate_score(
        self, replies: Mapping[str, Scores], params: ForestParams, ctx: CoordinatorContext
    ) -> Done:
        trees: list[Tree] = ctx.state["trees"]
        owners: list[str] = ctx.state["owners"]
        features = list(params.features or [])
        classes = ctx.state["classes"]
        result: dict[str, Any] = {
            "task": params.task,
            "target": params.target,
            "features": features,
        }
        if classes is not None:
            result["classes"] = list(classes)
        result.update(
            n_trees=len(trees),
            trees_per_site={s: owners.count(s) for s in ctx.state["shares"]},
            n_obs=int(sum(r.n for r in replies.values())),
            max_depth=params.max_depth,
            min_samples_leaf=max(params.min_samples_leaf, ctx.min_count),
            max_features=params.max_features,
            seed=ctx.state["seed"],
        )
        result.update(_metrics(replies, params.task or "classification", ctx))
        grown = [t.importances for t in trees if t.n_nodes > 1]
        importances = np.mean(grown, axis=0) if grown else np.zeros(len(features))
        if importances.sum() > 0:
            importances = importances / importances.sum()
        result["feature_importances"] = named(features, importances)
        model = ForestModel(
            params.task or "classification",
            params.target,
            features,
            classes,
            Forest(trees, len(features)),
            owners,
        )
        return Done(result, artifacts={MODEL_FILE: encode_forest(model, trees)})

    # -- site -----------------------------------------------------------------------------------
    def local_labels(
        self, data: Table, params: ForestParams, request: Empty, ctx: SiteContext
    ) -> Labels:
        check_min_count(data.n_rows, ctx.min_count, "the site's data")
        return Labels(labels=np.unique(_site_labels(data[params.target], params.target)))

    def local_grow(
        self, data: Table, params: ForestParams, request: GrowRequest, ctx: SiteContext
    ) -> Grown:
        check_min_count(data.n_rows, ctx.min_count, "the site's data")
        features = list(params.features or [])
        x = _feature_matrix(data, features)
        if params.task == "classification":
            if request.classes is None:
                raise AppError(f"app '{self.name}': the coordinator sent no class order")
            classes = np.asarray(request.classes)
            labels = _site_labels(data[params.target], params.target)
            if classes.dtype.kind == "U":
                labels = labels.astype(str)
            codes = np.searchsorted(classes, labels)
            codes = np.minimum(codes, len(classes) - 1)
            if (classes[codes] != labels).any():
                raise DataError(
                    f"target column '{params.target}' holds a label missing from the global classes",
                    column=params.target,
                )
            y: np.ndarray = codes
            n_classes = len(classes)
        else:
            y = np.asarray(data[params.target], dtype=np.float64)
            if not np.isfinite(y).all():
                raise DataError(
                    f"column '{params.target}' holds missing or infinite values",
                    column=params.target,
                )
            n_classes = 0
        min_leaf = max(params.min_samples_leaf, ctx.min_count)
        max_features = resolve_max_features(
            params.max_features, len(features), params.task or "classification"
        )
        rng = _site_rng(request.seed, ctx.site)
        n_trees = request.n_trees
        if n_trees < 1:
            raise AppError(f"app '{self.name}': the coordinator asked for {n_trees} trees")
        inbag = np.zeros((len(x), n_trees), dtype=bool)
        trees = []
        for j in range(n_trees):
            if params.bootstrap:
                weight = bootstrap_weights(len(x), rng, min_leaf)
            else:
                weight = np.ones(len(x))
            inbag[:, j] = weight > 0
            trees.append(
                grow_tree(
                    x,
                    y,
                    weight,
                    n_classes=n_classes,
                    max_depth=params.max_depth,
                    min_samples_leaf=min_leaf,
                    max_features=max_features,
                    rng=rng,
                )
            )
        ctx.state.update(x=x, y=y, inbag=inbag)
        return _pack(trees)

    def local_score(
        self, data: Table, params: ForestParams, request: ScoreRequest, ctx: SiteContext
    ) -> Scores:
        check_min_count(data.n_rows, ctx.min_count, "the site's data")
        if "inbag" not in ctx.state:
            raise AppError(f"app '{self.name}': asked to score before growing trees")
        x, y, inbag = ctx.state["x"], ctx.state["y"], ctx.state["inbag"]
        n_features = x.shape[1]
        try:
            forest = Forest(_unpack(request.forest, n_features), n_features)
        except ValueError as exc:
            raise AppError(
                f"app '{self.name}': the coordinator sent a malformed forest: {exc}"
            ) from None
        if len(request.own) != 2:
            raise AppError(f"app '{self.name}': 'own' must be [start, stop], not {request.own}")
        start, stop = request.own
        if stop - start != inbag.shape[1] or not 0 <= start <= stop <= forest.n_trees:
            raise AppError(
                f"app '{self.name}': the coordinator placed this site's {inbag.shape[1]} trees "
                f"at {start}..{stop} of {forest.n_trees}"
            )
        mask = np.ones((len(x), forest.n_trees), dtype=bool)
        mask[:, start:stop] = ~inbag
        full, oob, count = forest.predict_with_mask(x, mask)
        has_oob = count > 0
        task = params.task or "classification"
        fit = _site_fit(full, y, task, ctx.min_count)
        if has_oob.sum() >= ctx.min_count:
            oob_fit = _site_fit(oob[has_oob], y[has_oob], task, ctx.min_count)
            return Scores(n=len(x), fit=fit, oob_n=int(has_oob.sum()), oob=oob_fit)
        return Scores(n=len(x), fit=fit, oob_n=0)

    # -- prediction -----------------------------------------------------------------------------
    @classmethod
    def load_model(cls, artifacts: Mapping[str, bytes], where: str = "") -> ForestModel:
        """Return the forest a run saved (``artifacts``: the run directory's files by name;
        ``where``: the directory, for messages). Raises KeyError (or what ``artifacts`` raises)
        when there is no ``forest.json``, DataError when it is corrupt."""
        content = artifacts[MODEL_FILE]
        return decode_forest(
            content, source=os.path.join(where, MODEL_FILE) if where else MODEL_FILE
        )

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: ForestParams) -> dict[str, Any]:
        """scikit-learn's forest on the pooled rows, scored by its own out-of-bag estimates.

        Resolves its own defaults from the frame (``task``: regression for a float target;
        ``features``: every numeric column but the target; ``max_features``: scikit-learn's
        default for the estimator). Raises AppError for ``bootstrap = false`` (scikit-learn has
        no out-of-bag estimate without bootstrap samples).
        """
        import pandas as pd
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
        from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score

        if not params.bootstrap:
            raise AppError(
                f"app '{self.name}': the scikit-learn reference needs bootstrap = true "
                "(out-of-bag estimates exist only for bootstrap samples)"
            )
        target = pooled[params.target]
        task = params.task or (
            "regression" if pd.api.types.is_float_dtype(target) else "classification"
        )
        features = list(params.features or [])
        if not features:
            features = [
                str(c)
                for c in pooled.columns
                if c != params.target and pd.api.types.is_numeric_dtype(pooled[c])
            ]
        x = pooled[features].to_numpy(dtype=np.float64)
        settings: dict[str, Any] = {
            "n_estimators": params.n_estimators,
            "max_depth": params.max_depth,
            "min_samples_leaf": params.min_samples_leaf,
            "bootstrap": True,
            "oob_score": True,
            "random_state": params.seed if params.seed is not None else 0,
        }
        if params.max_features is not None:  # else scikit-learn's own default for the estimator
            settings["max_features"] = None if params.max_features == "all" else params.max_features
        result: dict[str, Any] = {"task": task, "features": features}
        if task == "classification":
            labels = target.to_numpy()
            classifier = RandomForestClassifier(**settings).fit(x, labels)
            classes = classifier.classes_
            proba = classifier.predict_proba(x)
            oob_proba = classifier.oob_decision_function_
            result["classes"] = [c.item() if hasattr(c, "item") else c for c in classes]
            result["n_trees"] = len(classifier.estimators_)
            result["n_obs"] = len(pooled)
            result["accuracy"] = float(accuracy_score(labels, classes[proba.argmax(axis=1)]))
            result["oob_accuracy"] = float(classifier.oob_score_)
            if len(classes) == 2:
                positive = labels == classes[1]
                result["auc"] = float(roc_auc_score(positive, proba[:, 1]))
                result["oob_auc"] = float(roc_auc_score(positive, oob_proba[:, 1]))
        else:
            y = target.to_numpy(dtype=np.float64)
            regressor = RandomForestRegressor(**settings).fit(x, y)
            pred = regressor.predict(x)
            oob_pred = regressor.oob_prediction_
            result["n_trees"] = len(regressor.estimators_)
            result["n_obs"] = len(pooled)
            result["r2"] = float(r2_score(y, pred))
            result["rmse"] = float(math.sqrt(mean_squared_error(y, pred)))
            result["oob_r2"] = float(regressor.oob_score_)
            result["oob_rmse"] = float(math.sqrt(mean_squared_error(y, oob_pred)))
        return result

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """What must be identical (task, features, classes, n_trees, n_obs) and the out-of-bag
        quality: ``oob_accuracy`` and, for two classes, ``oob_auc``; ``oob_r2`` for regression.
        Selected by key: a result missing one fails."""
        keys = ["task", "features", "n_trees", "n_obs"]
        if result["task"] == "classification":
            keys += ["classes", "oob_accuracy"]
            if len(result["classes"]) == 2:
                keys.append("oob_auc")
        else:
            keys.append("oob_r2")
        return {k: result[k] for k in keys}


def _site_fit(
    pred: np.ndarray, y: np.ndarray, task: str, min_count: int
) -> ClassFit | RegressionFit:
    """Return a site's aggregates of predictions ``pred`` against ``y`` (codes or values)."""
    if task == "classification":
        blocks = None
        if pred.shape[1] == 2:
            blocks = AucBlocks(**score_blocks(pred[:, 1], y == 1, min_count))
        return ClassFit(correct=int(np.sum(pred.argmax(axis=1) == y)), auc_blocks=blocks)
    y_mean = float(y.mean())
    return RegressionFit(
        sse=float(np.sum((y - pred[:, 0]) ** 2)),
        y_mean=y_mean,
        y_m2=float(np.sum((y - y_mean) ** 2)),
    )


def _metrics(replies: Mapping[str, Scores], task: str, ctx: CoordinatorContext) -> dict[str, Any]:
    """Return training and out-of-bag metrics from the sites' scoring aggregates."""
    out: dict[str, Any] = {}
    with_oob = all(r.oob_n > 0 and r.oob is not None for r in replies.values())
    if not with_oob:
        ctx.notes.append(
            "random-forest: out-of-bag metrics left out: a site has fewer than min_count rows "
            "that some tree did not see"
        )
    parts: list[tuple[str, list[tuple[str, int, ClassFit | RegressionFit | None]]]] = [
        ("", [(s, r.n, r.fit) for s, r in replies.items()])
    ]
    if with_oob:
        parts.append(("oob_", [(s, r.oob_n, r.oob) for s, r in replies.items()]))
    for prefix, fits in parts:
        n = float(sum(count for _, count, _ in fits))
        if task == "classification":
            classed = [_expect(site, fit, ClassFit) for site, _, fit in fits]
            out[f"{prefix}accuracy"] = sum(f.correct for f in classed) / n
            blocks = [f.auc_blocks for f in classed]
            if all(b is not None for b in blocks):
                auc = auc_from_blocks([msgspec.structs.asdict(b) for b in blocks if b is not None])
                out[f"{prefix}auc"] = None if math.isnan(auc) else auc
        else:
            fitted = [(count, _expect(site, fit, RegressionFit)) for site, count, fit in fits]
            sse = sum(f.sse for _, f in fitted)
            _, _, sst = combine_moments([(float(c), f.y_mean, f.y_m2) for c, f in fitted])
            out[f"{prefix}r2"] = 1.0 - sse / sst if sst > 0 else None
            out[f"{prefix}rmse"] = math.sqrt(sse / n)
    if with_oob:
        out["oob_n_obs"] = int(sum(r.oob_n for r in replies.values()))
    return out


def _expect(site: str, fit: Any, kind: type[Any]) -> Any:
    """Return ``fit`` when it is of ``kind`` (the task's aggregates); AppError naming the site."""
    if not isinstance(fit, kind):
        raise AppError(
            f"random-forest: site '{site}' sent {type(fit).__name__} aggregates, "
            f"not {kind.__name__}"
        )
    return fit
