"""``random-forest`` of FeatureCloud: the native twin of ``FeatureCloud/fc-random-forest``.

The FeatureCloud app (``app/logic.py``) reads ``config.yml``, section ``fc_random_forest``; each
client reads ``input.train`` (and ``input.test``) with ``pandas.read_csv(path, sep=format.sep)``,
takes ``format.label`` as the target and every other column as a feature, and tells the
coordinator its number of training rows. Each client then fits scikit-learn's
``RandomForestClassifier`` (``mode: classification``) or ``RandomForestRegressor``
(``mode: regression``) with ``n_estimators = int(estimators · its rows / all rows)`` and
``random_state`` (the same at every client), every other setting scikit-learn's default. The
coordinator concatenates the clients' trees into one forest (``estimators_ +=``) and sends it
back; each client predicts its test rows and writes, with ``to_csv(index=False, sep=format.sep)``,
``output.pred`` (column ``pred``: ``predict``), ``output.proba`` (classification: columns
``prob_0``, ``prob_1``, the first two columns of ``predict_proba``) and ``output.test``
(column ``y_true``: the test rows' labels). It also copies its input folder to its output.

This twin does the same in three phases:

1. ``labels`` (``Empty`` → ``TrainInfo``): each site's number of training rows and (for
   classification) the set of labels it holds; the coordinator fixes the global class order
   (sorted, as scikit-learn orders ``classes_``) and each site's share of trees, the app's
   ``int(estimators · rows / all rows)``.
2. ``grow`` (``forest.GrowRequest`` → ``forest.Grown``): each site fits the app's scikit-learn
   forest on its training rows and sends its trees as arrays (``fedflow.apps.forest``'s format:
   never pickled objects): features, thresholds, children and leaf values (class probabilities
   over the global classes, or means).
3. ``write`` (``WriteRequest`` → ``ScoredTest``): the coordinator sends the whole forest (trees in
   the study's site order); each site predicts its test rows as scikit-learn's forest does (the
   rows cast to float32 as scikit-learn's trees read them, each tree's leaf values added in tree
   order, then divided by the number of trees), writes the app's three files to its output
   folder (``SiteContext.outputs``) and returns aggregates only: correct predictions and the
   binary score histogram (``forest.score_blocks``), or the sum of squared errors and the
   target's moments. The result holds the forest's test accuracy (and AUC) or R².

Privacy: scikit-learn's defaults let a leaf describe a single row. The twin grows every tree with
``min_samples_leaf = max(min_samples_leaf, min_count)`` (the study's ``min_count``, default 5):
with ``min_count = 1`` the trees and every written file are the app's own; above it, no leaf
describes fewer than ``min_count`` rows of a site, and the predictions differ from the app's. As
in fedflow's ``random-forest``, thresholds disclose (approximately) feature values present at a
site and the label phase discloses which labels a site holds. Neither streaming nor secure.

The study loader (``fedflow.study.original``) reads ``config.yml`` and passes its keys as
parameters; this module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np

from fedflow.apps._fc_csv import frame_csv
from fedflow.apps._merge import combine_moments
from fedflow.apps._trees import Forest, Tree
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
    Table,
    check_min_count,
)
from fedflow.apps.forest import (
    OOB_RULE,
    AucBlocks,
    ClassFit,
    Grown,
    GrowRequest,
    RegressionFit,
    TreeArrays,
    _arrays,
    _feature_matrix,
    _site_labels,
    _unpack,
    auc_from_blocks,
    merge_labels,
    score_blocks,
)
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FCForestParams", "FeatureCloudForest", "ScoredTest", "TrainInfo", "WriteRequest"]

Mode = Literal["classification", "regression"]


class FCForestParams(Params, frozen=True):
    """The app's ``config.yml`` keys (``fc_random_forest``), as the study loader passes them."""

    label: str
    """``format.label``: the target column."""
    mode: Mode = "classification"
    estimators: int = 100
    """The forest's total number of trees, shared out by rows (rounded down per site)."""
    random_state: int | None = None
    """scikit-learn's ``random_state`` at every site; None: the study's seed (else 0)."""
    sep: str = ","
    """``format.sep``: the separator of the written files (the input's is the site's ``sep``)."""
    pred: str = "pred.csv"
    proba: str = "proba.csv"
    test: str = "test.csv"
    test_rows: dict[str, int] = msgspec.field(default_factory=dict)
    """Per site: how many of its last rows are the test file's (``input.test`` naming another
    file than ``input.train``); a site not listed tests on its training rows."""
    min_samples_leaf: int = 1
    """The fewest rows a leaf describes (raised to the study's ``min_count`` at each site)."""
    features: list[str] | None = None
    """Every column but the label, in the file's order (resolved from the data)."""
    config_yml: str = ""
    """The app's ``config.yml`` text, copied to each site's output folder as the app does."""

    def __post_init__(self) -> None:
        if self.estimators < 1:
            raise ValueError("estimators must be at least 1")
        if self.min_samples_leaf < 1:
            raise ValueError("min_samples_leaf must be at least 1")
        if len(self.sep) != 1:
            raise ValueError(f"sep must be one character, got {self.sep!r}")
        for key in ("pred", "proba", "test"):
            name = getattr(self, key)
            if not name or "/" in name or "\\" in name or name in (".", "..", "config.yml"):
                raise ValueError(f"output {key} must be a plain file name, got {name!r}")
        if any(rows < 0 for rows in self.test_rows.values()):
            raise ValueError("test_rows must not be negative")


class TrainInfo(Payload, frozen=True):
    """``labels`` reply: the site's number of training rows and the labels they hold."""

    rows: int
    labels: np.ndarray | None = None


class WriteRequest(Payload, frozen=True):
    """``write`` request: the whole forest."""

    forest: TreeArrays


class ScoredTest(Payload, frozen=True):
    """``write`` reply: the site's test rows scored by the forest (aggregates only)."""

    n: int
    fit: ClassFit | RegressionFit


def train_test_split_rows(n_rows: int, test_rows: int) -> tuple[slice, slice]:
    """Return the training and test rows of a site's table: the test file's rows are the last
    ``test_rows`` (0: the training rows are also the test rows, one file)."""
    if test_rows <= 0:
        return slice(0, n_rows), slice(0, n_rows)
    if test_rows >= n_rows:
        raise ValueError(f"the test file holds {test_rows} of the site's {n_rows} rows")
    return slice(0, n_rows - test_rows), slice(n_rows - test_rows, n_rows)


def sklearn_trees(estimators: list[Any], classes: np.ndarray | None) -> list[Tree]:
    """Return scikit-learn fitted trees as ``_trees.Tree`` arrays, leaf values mapped onto the
    global ``classes`` (class codes 0…C−1; a class the site lacks gets probability 0)."""
    trees = []
    for est in estimators:
        t = est.tree_
        inner = t.children_left >= 0
        if classes is not None:
            present = np.asarray(est.classes_, dtype=np.int64)
            value = np.zeros((t.node_count, len(classes)))
            value[:, present] = t.value[:, 0, : len(present)]
        else:
            value = np.asarray(t.value[:, 0, :1], dtype=np.float64)
        trees.append(
            Tree(
                feature=np.where(inner, t.feature, -1).astype(np.int64),
                threshold=np.where(inner, t.threshold, 0.0).astype(np.float64),
                left=np.asarray(t.children_left, dtype=np.int64),
                right=np.asarray(t.children_right, dtype=np.int64),
                value=value,
                importances=np.asarray(est.feature_importances_, dtype=np.float64),
            )
        )
    return trees


def forest_predict(forest: Forest, x: np.ndarray) -> np.ndarray:
    """Return the forest's mean leaf value per row (rows × outputs) as scikit-learn computes
    ``predict_proba`` / ``predict``: rows cast to float32, each tree's value added in tree order,
    the sum divided by the number of trees."""
    x32 = np.asarray(x, dtype=np.float32).astype(np.float64)
    leaves = forest.apply(x32)
    total = np.zeros((len(x32), forest.n_outputs))
    for j in range(forest.n_trees):
        total += forest.value[leaves[:, j]]
    total /= forest.n_trees
    return total


class FeatureCloudForest(App[FCForestParams]):
    """FeatureCloud random-forest's twin: the app's scikit-learn trees, merged, its output files."""

    name = "fc-random-forest"
    Params = FCForestParams
    reference = "scikit-learn RandomForest on the pooled rows (the app run with one client)"
    phases = {
        "labels": Phase(Empty, TrainInfo),
        "grow": Phase(GrowRequest, Grown),
        "write": Phase(WriteRequest, ScoredTest),
    }
    secure = "the sites send trees grown on their own rows, which are not sums over sites"
    streaming = False  # scikit-learn fits on every training row at once
    tolerances = {"test_accuracy": OOB_RULE, "test_auc": OOB_RULE, "test_r2": OOB_RULE}

    def resolve(self, params: FCForestParams, columns: Mapping[str, str]) -> FCForestParams:
        if params.label not in columns:
            raise AppError(
                f"app '{self.name}': format.label '{params.label}' is not a column of the data "
                f"(columns: {', '.join(columns)})"
            )
        kind = columns[params.label]
        if params.mode == "regression" and kind == "str":
            raise AppError(
                f"app '{self.name}': mode regression needs a numeric label; '{params.label}' "
                "holds text"
            )
        features = params.features
        if features is None:
            features = [c for c in columns if c != params.label]
        text = [c for c in features if columns.get(c) == "str"]
        if text:
            raise AppError(
                f"app '{self.name}': column '{text[0]}' holds text; the app's scikit-learn "
                "forest takes every column but the label as a number"
            )
        if not features:
            raise AppError(f"app '{self.name}': the data has no column besides '{params.label}'")
        return msgspec.structs.replace(params, features=features)

    def columns(self, params: FCForestParams) -> dict[str, ColumnKind]:
        needed: dict[str, ColumnKind] = {
            params.label: "numeric" if params.mode == "regression" else "any"
        }
        needed.update({f: "numeric" for f in params.features or []})
        return needed

    # -- coordinator ----------------------------------------------------------------------------
    def aggregate_labels(
        self, replies: Mapping[str, TrainInfo], params: FCForestParams, ctx: CoordinatorContext
    ) -> Continue:
        classes: list[int] | list[str] | None = None
        if params.mode == "classification":
            classes = merge_labels([r.labels for r in replies.values() if r.labels is not None])
            if len(classes) < 2:
                raise AppError(
                    f"app '{self.name}': the label '{params.label}' has a single class "
                    f"({classes[0] if classes else 'none'}) across all sites"
                )
            missing = {
                s: sorted(set(map(str, classes)) - set(map(str, np.asarray(r.labels).tolist())))
                for s, r in replies.items()
                if r.labels is not None
            }
            lacking = {s: m for s, m in missing.items() if m}
            if lacking:
                site, absent = next(iter(lacking.items()))
                ctx.notes.append(
                    f"fc-random-forest: site '{site}' holds no row of class {', '.join(absent)}; "
                    "its trees give that class probability 0 (the FeatureCloud app fails when "
                    "the clients' classes differ)"
                )
        total = sum(r.rows for r in replies.values())
        shares = {s: int(params.estimators * r.rows / total) for s, r in replies.items()}
        empty = [s for s, k in shares.items() if k < 1]
        if empty:
            site = empty[0]
            raise AppError(
                f"app '{self.name}': site '{site}' gets int({params.estimators} · "
                f"{replies[site].rows} / {total}) = 0 trees (the app's share, which fails for "
                "it too): raise estimators in config.yml"
            )
        seed = params.random_state
        if seed is None:
            seed = ctx.seed if ctx.seed is not None else 0
            ctx.notes.append(
                f"fc-random-forest: config.yml sets no random_state (the app then draws an "
                f"unseeded forest); the twin uses {seed}"
            )
        order = [s for s in ctx.sites if s in replies]
        ctx.state.update(classes=classes, shares=shares, seed=int(seed), order=order)
        common = GrowRequest(
            seed=int(seed), n_trees=0, classes=None if classes is None else np.asarray(classes)
        )
        return Continue(
            "grow",
            common,
            per_site={s: msgspec.structs.replace(common, n_trees=shares[s]) for s in order},
        )

    def aggregate_grow(
        self, replies: Mapping[str, Grown], params: FCForestParams, ctx: CoordinatorContext
    ) -> Continue:
        features = params.features or []
        classes = ctx.state["classes"]
        n_outputs = len(classes) if classes is not None else 1
        trees: list[Tree] = []
        for site in ctx.state["order"]:
            reply = replies[site]
            try:
                site_trees = _unpack(reply, len(features), np.asarray(reply.importances))
                if len(site_trees) != ctx.state["shares"][site]:
                    raise ValueError(
                        f"{len(site_trees)} trees, asked for {ctx.state['shares'][site]}"
                    )
                if any(t.value.shape[1] != n_outputs for t in site_trees):
                    raise ValueError(f"trees must have {n_outputs} outputs")
                Forest(site_trees, len(features))
            except ValueError as exc:
                raise AppError(
                    f"app '{self.name}': site '{site}' sent malformed trees: {exc}"
                ) from None
            trees.extend(site_trees)
        ctx.state["n_trees"] = len(trees)
        return Continue("write", WriteRequest(forest=TreeArrays(**_arrays(trees))))

    def aggregate_write(
        self, replies: Mapping[str, ScoredTest], params: FCForestParams, ctx: CoordinatorContext
    ) -> Done:
        classes = ctx.state["classes"]
        n = sum(r.n for r in replies.values())
        result: dict[str, Any] = {
            "mode": params.mode,
            "label": params.label,
            "features": list(params.features or []),
        }
        if classes is not None:
            result["classes"] = list(classes)
        result.update(
            n_trees=ctx.state["n_trees"],
            trees_per_site=dict(ctx.state["shares"]),
            random_state=ctx.state["seed"],
            min_samples_leaf=max(params.min_samples_leaf, ctx.min_count),
            n_test=n,
            outputs=[params.pred, params.proba, params.test]
            if params.mode == "classification"
            else [params.pred, params.test],
        )
        fits = [r.fit for r in replies.values()]
        if params.mode == "classification":
            classed = [f for f in fits if isinstance(f, ClassFit)]
            if len(classed) != len(fits):
                raise AppError(f"app '{self.name}': a site sent regression aggregates")
            result["test_accuracy"] = sum(f.correct for f in classed) / n
            blocks = [f.auc_blocks for f in classed]
            if all(b is not None for b in blocks):
                auc = auc_from_blocks([msgspec.structs.asdict(b) for b in blocks if b is not None])
                result["test_auc"] = None if math.isnan(auc) else auc
        else:
            fitted = [(r.n, r.fit) for r in replies.values() if isinstance(r.fit, RegressionFit)]
            if len(fitted) != len(fits):
                raise AppError(f"app '{self.name}': a site sent classification aggregates")
            sse = sum(f.sse for _, f in fitted)
            _, _, sst = combine_moments([(float(c), f.y_mean, f.y_m2) for c, f in fitted])
            result["test_r2"] = 1.0 - sse / sst if sst > 0 else None
            result["test_rmse"] = math.sqrt(sse / n)
        return Done(result)

    # -- site -----------------------------------------------------------------------------------
    def _split(self, data: Table, params: FCForestParams, ctx: SiteContext) -> tuple[slice, slice]:
        try:
            return train_test_split_rows(data.n_rows, params.test_rows.get(ctx.site, 0))
        except ValueError as exc:
            raise DataError(f"{exc}: is input.test the last file of the data list?") from None

    def local_labels(
        self, data: Table, params: FCForestParams, request: Empty, ctx: SiteContext
    ) -> TrainInfo:
        train, _ = self._split(data, params, ctx)
        rows = train.stop - train.start
        check_min_count(rows, ctx.min_count, "the site's training rows")
        if params.mode == "regression":
            return TrainInfo(rows=rows)
        labels = _site_labels(np.asarray(data[params.label])[train], params.label)
        return TrainInfo(rows=rows, labels=np.unique(labels))

    def _codes(self, data: Table, params: FCForestParams, rows: slice, classes: np.ndarray) -> Any:
        labels = _site_labels(np.asarray(data[params.label])[rows], params.label)
        if classes.dtype.kind == "U":
            labels = labels.astype(str)
        codes = np.minimum(np.searchsorted(classes, labels), len(classes) - 1)
        if (classes[codes] != labels).any():
            raise DataError(
                f"label column '{params.label}' holds a class missing from the global classes",
                column=params.label,
            )
        return codes

    def local_grow(
        self, data: Table, params: FCForestParams, request: GrowRequest, ctx: SiteContext
    ) -> Grown:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        train, _ = self._split(data, params, ctx)
        features = list(params.features or [])
        x = _feature_matrix(data, features)[train]
        leaf = max(params.min_samples_leaf, ctx.min_count)
        if request.n_trees < 1:
            raise AppError(f"app '{self.name}': the coordinator asked for {request.n_trees} trees")
        settings = {
            "n_estimators": request.n_trees,
            "random_state": request.seed,
            "min_samples_leaf": leaf,
        }
        if params.mode == "classification":
            if request.classes is None:
                raise AppError(f"app '{self.name}': the coordinator sent no class order")
            classes = np.asarray(request.classes)
            ctx.state["classes"] = classes
            y = self._codes(data, params, train, classes)
            model: Any = RandomForestClassifier(**settings).fit(x, y)
        else:
            classes = None
            y = np.asarray(data[params.label], dtype=np.float64)[train]
            if not np.isfinite(y).all():
                raise DataError(
                    f"column '{params.label}' holds missing or infinite values",
                    column=params.label,
                )
            model = RandomForestRegressor(**settings).fit(x, y)
        trees = sklearn_trees(model.estimators_, classes)
        return Grown(**_arrays(trees), importances=np.vstack([t.importances for t in trees]))

    def local_write(
        self, data: Table, params: FCForestParams, request: WriteRequest, ctx: SiteContext
    ) -> ScoredTest:
        _, test = self._split(data, params, ctx)
        features = list(params.features or [])
        x = _feature_matrix(data, features)[test]
        try:
            forest = Forest(_unpack(request.forest, len(features)), len(features))
        except ValueError as exc:
            raise AppError(
                f"app '{self.name}': the coordinator sent a malformed forest: {exc}"
            ) from None
        output = forest_predict(forest, x)
        y_true = np.asarray(data[params.label])[test]
        fit: ClassFit | RegressionFit
        if params.mode == "classification":
            classes = self._classes(ctx)
            codes = self._codes(data, params, test, classes)
            best = output.argmax(axis=1)
            labels = _site_labels(y_true, params.label)
            pred = (
                classes[best] if classes.dtype.kind == "U" else classes[best].astype(labels.dtype)
            )
            ctx.outputs[params.pred] = frame_csv(["pred"], [pred], sep=params.sep)
            ctx.outputs[params.proba] = frame_csv(
                ["prob_0", "prob_1"], [output[:, 0], output[:, 1]], sep=params.sep
            )
            blocks = None
            if output.shape[1] == 2:
                blocks = AucBlocks(**score_blocks(output[:, 1], codes == 1, ctx.min_count))
            fit = ClassFit(correct=int(np.sum(best == codes)), auc_blocks=blocks)
        else:
            pred = output[:, 0]
            ctx.outputs[params.pred] = frame_csv(["pred"], [pred], sep=params.sep)
            y = np.asarray(y_true, dtype=np.float64)
            y_mean = float(y.mean())
            fit = RegressionFit(
                sse=float(np.sum((y - pred) ** 2)),
                y_mean=y_mean,
                y_m2=float(np.sum((y - y_mean) ** 2)),
            )
        ctx.outputs[params.test] = frame_csv(["y_true"], [y_true], sep=params.sep)
        if params.config_yml:
            ctx.outputs["config.yml"] = params.config_yml.encode()
        return ScoredTest(n=len(x), fit=fit)

    def _classes(self, ctx: SiteContext) -> np.ndarray:
        classes = ctx.state.get("classes")
        if classes is None:
            raise AppError(f"app '{self.name}': asked to write before growing trees")
        return classes

    # -- reference ------------------------------------------------------------------------------
    def centralized(self, pooled: pd.DataFrame, params: FCForestParams) -> dict[str, Any]:
        """The app run with one client holding every row: scikit-learn's forest of
        ``estimators`` trees fitted on the pooled rows and scored on them (train = test)."""
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
        from sklearn.metrics import r2_score, roc_auc_score

        features = list(params.features or [c for c in pooled.columns if c != params.label])
        x = pooled[features].to_numpy(dtype=np.float64)
        settings = {
            "n_estimators": params.estimators,
            "random_state": params.random_state if params.random_state is not None else 0,
            "min_samples_leaf": params.min_samples_leaf,
        }
        result: dict[str, Any] = {"mode": params.mode, "features": features}
        if params.mode == "classification":
            y = pooled[params.label].to_numpy()
            model = RandomForestClassifier(**settings).fit(x, y)
            result["classes"] = [c.item() if hasattr(c, "item") else c for c in model.classes_]
            proba = model.predict_proba(x)
            result["test_accuracy"] = float(np.mean(model.classes_[proba.argmax(axis=1)] == y))
            if len(model.classes_) == 2:
                result["test_auc"] = float(roc_auc_score(y == model.classes_[1], proba[:, 1]))
        else:
            y = pooled[params.label].to_numpy(dtype=np.float64)
            model = RandomForestRegressor(**settings).fit(x, y)
            result["test_r2"] = float(r2_score(y, model.predict(x)))
        result["n_test"] = len(pooled)
        return result

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The features, classes and number of rows exactly, the forest's quality within 0.1
        (the federated forest is another forest). Meaningful when every site's test file is its
        training file, as in the original's workflow: the pooled twin scores the pooled rows."""
        keys = ["mode", "features", "n_test"]
        if result["mode"] == "classification":
            keys += ["classes", "test_accuracy"]
            if len(result["classes"]) == 2:
                keys.append("test_auc")
        else:
            keys.append("test_r2")
        return {k: result[k] for k in keys}
