"""``ada-boost``: the native twin of FeatureCloud's federated AdaBoost app
(``github.com/FeatureCloud/fc-boosting``, the app the original fedflow ran as ``tool = 'ada-boost'``).

What the app does (``states.py``, ``fc_app/boosting.py``, ``fc_app/helpfunctions.py``), and the
twin with it:

1. Each client reads ``fc_boosting.files.input`` with ``pandas.read_csv`` (a header line; ``,``
   for ``.csv``, tab for ``.tsv``), fills missing values with each column's mean or median, or
   drops rows with any (``files.missing_data``; the twin drops them with the study's
   ``dropna = true`` and does not fill them: a site refuses gaps), takes ``parameters.label_col`` as the label and
   every other column, by position, as a feature. It splits its rows with scikit-learn's
   ``train_test_split(X, y, test_size=test_size, stratify=y, random_state=random_state)``, fits
   ``AdaBoostClassifier(n_estimators, learning_rate=float(learning_rate), random_state=
   random_state or None)`` (decision stumps) on the training rows, scores it on its test rows
   (the *local model*) and sends the fitted model to the coordinator.
2. The coordinator takes the first model it received (its own: the coordinator's reaches its
   queue at once) and appends every other model's ``estimators_`` to its ``estimators_``; the
   first model's ``estimator_weights_`` and ``classes_`` stay as they are. It sends that
   *global model* to every client.
3. Each client scores the global model's ``predict`` on its own test rows and writes
   ``eval_on_local_testset.csv`` (rows ``local_model`` and ``global_model``, one column named
   by ``metric``) to its output folder.

How ``predict`` treats the appended stumps depends on scikit-learn's ``AdaBoostClassifier``
algorithm. The app's image is ``FROM python:3.8`` with an unpinned ``scikit-learn``, so it runs
scikit-learn ≤ 1.3.2 (the last release for Python 3.8), whose default is ``algorithm="SAMME.R"``:
every stump of every site counts with weight 1 (``algorithm = "SAMME.R"``, the default here).
With scikit-learn ≥ 1.6 (``SAMME``, the only algorithm left) ``decision_function`` pairs the
estimators with the first model's ``estimator_weights_`` (``zip``), so only the first site's
stumps count (``algorithm = "SAMME"`` reproduces that, too).

The twin fits each site's boosting rounds as scikit-learn's ``AdaBoostClassifier.fit`` does
(``SAMME.R`` as in 1.3.2, ``SAMME`` as in 1.6 and later): the same seeds for the stumps (one
``RandomState(random_state).randint(2**31 - 1)`` per round), scikit-learn's own
``DecisionTreeClassifier(max_depth=1)`` and ``train_test_split`` at the site, the same weight
updates, clipping and early stops. Stumps travel as arrays (``_trees``: feature, threshold,
children, class proportions at each node), never pickled; a site predicts with them on its test
rows cast to float32 first, as scikit-learn's trees compare them. Phases:

- ``fit`` (``Empty`` → ``LocalModel``): each site's stumps, ``estimator_weights_``, classes and
  feature names; the site keeps its test rows and its local score.
- ``evaluate`` (``GlobalModel`` → ``Evaluated``): the combined model; each site returns its two
  scores, its number of test rows and how many of them the global model classifies correctly,
  and writes ``eval_on_local_testset.csv`` into its output folder (``sites/<site>/`` of the run
  directory).

What a site reveals is what the app sends: its fitted stumps. A stump's threshold is the midpoint
between two observed values of a feature and its leaves hold weighted class proportions; neither
is a sum over sites, so the twin neither aggregates securely nor streams (the whole training set
is in memory, as in the app).

``--compare`` fits scikit-learn's ``AdaBoostClassifier`` on the pooled rows (the original
workflow's centralised run: one client with every row) and checks that the classes and features
are identical and that the global model's accuracy over every site's test rows is within 0.25
of the pooled model's accuracy on its own test rows: different models on different, small test
sets. Measured with 30 rounds on breast_cancer, iris and wine dealt to 2, 3 and 5 sites,
random_state 1, 2, 3 and 42: worst difference 0.145 with SAMME.R, 0.236 with SAMME (wine,
5 sites: only the first site's 36 training rows count).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedflow.apps._labels import category_labels
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
from fedflow.errors import AppError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EVAL_NAME",
    "AdaBoostParams",
    "BoostedModel",
    "FeatureCloudAdaBoost",
    "eval_csv",
    "fc_score",
    "fit_boosted",
    "split_like_the_app",
]

EVAL_NAME = "eval_on_local_testset.csv"
"""The file each client of the app writes (``write_results``)."""

_INT32_MAX = np.iinfo(np.int32).max


class AdaBoostParams(Params, frozen=True):
    label_col: str
    """The label column (``fc_boosting.parameters.label_col``)."""
    test_size: float | int = 0.3
    """The test share (a fraction) or number of test rows of each site (``test_size``)."""
    n_estimators: int = 50
    """Boosting rounds at each site (``n_estimators``)."""
    learning_rate: float = 1.0
    """``learning_rate``."""
    random_state: int | None = None
    """Seed of the split and of the stumps (``random_state``). The app seeds its split with it
    and its AdaBoost with ``random_state or None``: 0 or none leaves AdaBoost (and none the
    split) unseeded, which the twin replaces by a seed drawn from the study's seed and the
    site's name (a note says so)."""
    metric: str = "accuracy"
    """The score: text holding ``acc`` → accuracy, ``matth`` → Matthews correlation, ``roc`` or
    ``auc`` → ROC AUC of the predicted labels, anything else → accuracy (the app's rule)."""
    missing_data: str = "mean"
    """``files.missing_data`` (``mean``, ``median`` or ``drop``), recorded for the result.
    A site never hands an app missing values: it refuses them, or drops their rows with the
    study's ``dropna = true`` — the app's ``drop``, which the study loader sets for it. The
    app's ``mean`` / ``median`` filling is not reproduced (a site with gaps stops)."""
    algorithm: Literal["SAMME.R", "SAMME"] = "SAMME.R"
    """Which scikit-learn the app's image runs: ``SAMME.R`` (≤ 1.3, the image's Python 3.8;
    every site's stumps count) or ``SAMME`` (≥ 1.6; only the first site's stumps count)."""
    lead_site: str = ""
    """The site whose model the others' stumps are appended to (the FeatureCloud coordinator);
    default: the study's first site."""

    def __post_init__(self) -> None:
        if not self.label_col:
            raise ValueError("label_col must name the label column")
        if isinstance(self.test_size, bool) or not (
            (isinstance(self.test_size, float) and 0.0 < self.test_size < 1.0)
            or (isinstance(self.test_size, int) and self.test_size >= 1)
        ):
            raise ValueError(
                f"test_size must be a fraction between 0 and 1 or a number of rows, "
                f"got {self.test_size!r}"
            )
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be at least 1, got {self.n_estimators}")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.random_state is not None and not 0 <= self.random_state <= 2**32 - 1:
            raise ValueError(f"random_state must be in 0..2**32-1, got {self.random_state}")


class Stumps(Payload, frozen=True):
    """Stumps as concatenated ``_trees`` arrays; ``node_counts`` says how many nodes each holds
    (3, or 1 when no split was possible); ``value`` holds class proportions (nodes × classes)."""

    node_counts: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


class LocalModel(Payload, frozen=True):
    """``fit`` reply: a site's fitted AdaBoost as the app sends it (its stumps in fitting order,
    ``estimator_weights_`` of length ``n_estimators``, ``classes_`` as labels, in order)."""

    features: list[str]
    classes: list[str]
    stumps: Stumps
    weights: np.ndarray
    n_train: int
    n_test: int


class GlobalModel(Payload, frozen=True):
    """``evaluate`` request: the combined model (the lead site's weights and classes, every
    site's stumps, the lead site's first)."""

    classes: list[str]
    stumps: Stumps
    weights: np.ndarray


class Evaluated(Payload, frozen=True):
    """``evaluate`` reply: the app's two scores on the site's test rows, their number and how
    many of them the global model classifies correctly."""

    local_score: float
    global_score: float
    n_test: int
    correct: int


# -- the model -----------------------------------------------------------------------------------
class BoostedModel:
    """An AdaBoost classifier as arrays: ``stumps`` (``_trees.Tree``), ``weights``
    (``estimator_weights_``, zeros after an early stop) and ``classes`` (``classes_``)."""

    def __init__(
        self,
        stumps: Sequence[Tree],
        weights: np.ndarray,
        classes: np.ndarray,
        n_features: int,
        algorithm: str,
    ) -> None:
        self.stumps = list(stumps)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.classes = np.asarray(classes)
        self.algorithm = algorithm
        self.n_features = n_features
        self._forest = Forest(self.stumps, n_features)

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """scikit-learn's ``AdaBoostClassifier.decision_function`` of the chosen algorithm."""
        x32 = np.asarray(x, dtype=np.float32).astype(np.float64)  # as the trees compare rows
        leaves = self._forest.apply(x32)
        k = len(self.classes)
        pred: Any = 0
        if self.algorithm == "SAMME.R":
            eps = np.finfo(np.float64).eps
            for j in range(len(self.stumps)):
                proba = np.clip(self._forest.value[leaves[:, j]], eps, None)
                log_proba = np.log(proba)
                pred = pred + (k - 1) * (log_proba - (1.0 / k) * log_proba.sum(axis=1)[:, None])
        else:
            codes = np.arange(k)[:, None]
            for j, w in zip(range(len(self.stumps)), self.weights, strict=False):
                voted = np.argmax(self._forest.value[leaves[:, j]], axis=1)
                pred = pred + np.where((voted == codes).T, w, -1 / (k - 1) * w)
        pred = pred / self.weights.sum()
        if k == 2:
            pred[:, 0] *= -1
            return np.asarray(pred.sum(axis=1))
        return np.asarray(pred)

    def predict_codes(self, x: np.ndarray) -> np.ndarray:
        """Return the index in ``classes`` of each row's predicted class."""
        pred = self.decision_function(x)
        if len(self.classes) == 2:
            return (pred > 0).astype(np.int64)
        return np.argmax(pred, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return each row's predicted class (``classes_.take(...)``)."""
        return self.classes.take(self.predict_codes(x), axis=0)


def _sklearn_parts() -> tuple[Any, Any]:
    try:
        from sklearn.model_selection import train_test_split
        from sklearn.tree import DecisionTreeClassifier
    except ImportError:  # pragma: no cover - the test extras install it
        raise AppError(
            "ada-boost's twin fits scikit-learn's trees at each site as the app does: "
            "install scikit-learn there (pip install 'fedflow-studies[compare]')"
        ) from None
    return DecisionTreeClassifier, train_test_split


def split_like_the_app(
    x: np.ndarray, y: np.ndarray, test_size: float | int, random_state: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``train_test_split(x, y, test_size, stratify=y, random_state)``: the app's split."""
    _, train_test_split = _sklearn_parts()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return x_train, x_test, y_train, y_test


def fit_boosted(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_estimators: int,
    learning_rate: float,
    random_state: int,
    algorithm: str,
) -> BoostedModel:
    """Fit AdaBoost with decision stumps as scikit-learn's ``AdaBoostClassifier.fit`` does
    (``SAMME.R``: scikit-learn 1.3; ``SAMME``: 1.6 and later), with scikit-learn's trees."""
    tree_class, _ = _sklearn_parts()
    n = len(y)
    sample_weight = np.ones(n, dtype=np.float64)
    sample_weight /= sample_weight.sum()
    rng = np.random.RandomState(random_state)
    eps = np.finfo(np.float64).eps
    weights = np.zeros(n_estimators, dtype=np.float64)
    stumps: list[Tree] = []
    classes: np.ndarray | None = None
    for iboost in range(n_estimators):
        sample_weight = np.clip(sample_weight, a_min=eps, a_max=None)
        tree = tree_class(max_depth=1, random_state=rng.randint(_INT32_MAX))
        tree.fit(x, y, sample_weight=sample_weight)
        proba = tree.predict_proba(x)
        if classes is None:
            classes = tree.classes_
        assert classes is not None
        k = len(classes)
        y_predict = classes.take(np.argmax(proba, axis=1), axis=0)
        incorrect = y_predict != y
        error = float(np.mean(np.average(incorrect, weights=sample_weight, axis=0)))
        if error <= 0:  # perfect: weight 1 and stop
            stumps.append(_stump(tree))
            weights[iboost] = 1.0
            break
        if algorithm == "SAMME.R":
            y_codes = np.array([-1.0 / (k - 1), 1.0])
            y_coding = y_codes.take(classes == y[:, np.newaxis])
            np.clip(proba, eps, None, out=proba)
            boost = -1.0 * learning_rate * ((k - 1.0) / k) * _xlogy(y_coding, proba).sum(axis=1)
            if iboost != n_estimators - 1:
                sample_weight = sample_weight * np.exp(boost * ((sample_weight > 0) | (boost < 0)))
            stumps.append(_stump(tree))
            weights[iboost] = 1.0
        else:
            if error >= 1.0 - 1.0 / k:  # worse than chance: dropped, and boosting stops
                if not stumps:
                    raise DataError(
                        "AdaBoost's first stump is no better than chance: the site's model "
                        "cannot be fit (scikit-learn stops here too)"
                    )
                break
            alpha = learning_rate * (np.log((1.0 - error) / error) + np.log(k - 1.0))
            if iboost != n_estimators - 1:
                sample_weight = np.exp(
                    np.log(sample_weight) + alpha * incorrect * (sample_weight > 0)
                )
            stumps.append(_stump(tree))
            weights[iboost] = alpha
        total = float(np.sum(sample_weight))
        if not np.isfinite(total) or total <= 0:
            break
        if iboost < n_estimators - 1:
            sample_weight /= total
    assert classes is not None
    return BoostedModel(stumps, weights, classes, x.shape[1], algorithm)


def _xlogy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scipy's ``xlogy``: a·log(b), 0 where a is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a == 0, 0.0, a * np.log(b))


def _stump(tree: Any) -> Tree:
    """A fitted scikit-learn tree as ``_trees`` arrays (leaves: feature -1, threshold 0)."""
    t = tree.tree_
    leaf = t.children_left < 0
    value = np.asarray(t.value[:, 0, :], dtype=np.float64)
    norm = value.sum(axis=1)[:, None]
    norm[norm == 0.0] = 1.0
    return Tree(
        feature=np.where(leaf, -1, t.feature).astype(np.int64),
        threshold=np.where(leaf, 0.0, t.threshold).astype(np.float64),
        left=np.where(leaf, -1, t.children_left).astype(np.int64),
        right=np.where(leaf, -1, t.children_right).astype(np.int64),
        value=value / norm,  # predict_proba's normalisation
        importances=np.zeros(tree.n_features_in_),
    )


def _pack(stumps: Sequence[Tree]) -> Stumps:
    return Stumps(
        node_counts=np.array([s.n_nodes for s in stumps], dtype=np.int64),
        feature=np.concatenate([s.feature for s in stumps]),
        threshold=np.concatenate([s.threshold for s in stumps]),
        left=np.concatenate([s.left for s in stumps]),
        right=np.concatenate([s.right for s in stumps]),
        value=np.vstack([s.value for s in stumps]),
    )


def _unpack(packed: Stumps, n_features: int, n_classes: int, who: str) -> list[Tree]:
    """Return the stumps of a payload; AppError naming ``who`` when they are malformed."""
    counts = np.asarray(packed.node_counts, dtype=np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    arrays = {
        "feature": packed.feature,
        "threshold": packed.threshold,
        "left": packed.left,
        "right": packed.right,
        "value": packed.value,
    }
    problem = ""
    if counts.ndim != 1 or len(counts) == 0 or (counts < 1).any():
        problem = "node_counts must list positive node counts"
    elif any(len(a) != total for a in arrays.values()):
        problem = f"the node arrays do not hold {total} nodes"
    elif np.ndim(packed.value) != 2 or np.shape(packed.value)[1] != n_classes:
        problem = f"'value' must hold {n_classes} class proportions per node"
    if problem:
        raise AppError(f"ada-boost: {who} sent malformed stumps: {problem}")
    stumps = [
        Tree(
            feature=np.asarray(packed.feature[a:b], dtype=np.int64),
            threshold=np.asarray(packed.threshold[a:b], dtype=np.float64),
            left=np.asarray(packed.left[a:b], dtype=np.int64),
            right=np.asarray(packed.right[a:b], dtype=np.int64),
            value=np.asarray(packed.value[a:b], dtype=np.float64),
            importances=np.zeros(n_features),
        )
        for a, b in zip(ends - counts, ends, strict=True)
    ]
    try:
        Forest(stumps, n_features)
    except ValueError as exc:
        raise AppError(f"ada-boost: {who} sent malformed stumps: {exc}") from None
    return stumps


# -- the app's helpers ----------------------------------------------------------------------------
def fc_score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The app's score: ``acc`` → accuracy, ``matth`` → Matthews correlation, ``roc``/``auc``
    → ROC AUC of the predicted labels, otherwise accuracy (checked in that order)."""
    from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score

    if "acc" in metric:
        return float(accuracy_score(y_true, y_pred))
    if "matth" in metric:
        return float(matthews_corrcoef(y_true, y_pred))
    if "roc" in metric or "auc" in metric:
        try:
            return float(roc_auc_score(y_true, y_pred))
        except ValueError as exc:
            raise DataError(f"ada-boost: metric '{metric}' (ROC AUC): {exc}") from None
    return float(accuracy_score(y_true, y_pred))


def eval_csv(metric: str, local_score: float, global_score: float) -> bytes:
    """``eval_on_local_testset.csv`` as the app's ``DataFrame.to_csv`` writes it."""
    cells = ["" if np.isnan(v) else repr(float(v)) for v in (local_score, global_score)]
    return f",{metric}\nlocal_model,{cells[0]}\nglobal_model,{cells[1]}\n".encode()


def _ada_seed(params: AdaBoostParams, seed: int | None, site: str) -> int:
    """AdaBoost's seed at ``site``: the app's ``random_state or None``; unseeded → one drawn from
    the study's seed and the site's name."""
    if params.random_state:
        return params.random_state
    digest = hashlib.sha256(f"{seed or 0}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % _INT32_MAX


# -- the app -----------------------------------------------------------------------------------------
class FeatureCloudAdaBoost(App[AdaBoostParams]):
    """FeatureCloud ada-boost's twin: each site's AdaBoost stumps, combined as the app combines
    them, scored on each site's test rows and written to eval_on_local_testset.csv."""

    name = "ada-boost"
    Params = AdaBoostParams
    reference = "scikit-learn AdaBoostClassifier"
    phases = {
        "fit": Phase(Empty, LocalModel),
        "evaluate": Phase(GlobalModel, Evaluated),
    }
    secure = (
        "each site sends its fitted stumps (thresholds and class proportions), as the app "
        "sends its model: trees are not sums over sites"
    )
    streaming = False  # the split and the boosting rounds need every training row in memory
    tolerances = {"test_accuracy": (0.0, 0.25)}

    def columns(self, params: AdaBoostParams) -> dict[str, ColumnKind]:
        return {}  # every column of the file: the label and, by position, the features

    # phase 1: every site fits its own AdaBoost on its training rows
    def local_fit(
        self, data: Table, params: AdaBoostParams, request: Empty, ctx: SiteContext
    ) -> LocalModel:
        label = params.label_col
        if label not in data:
            raise DataError(
                f"ada-boost's label_col '{label}' is not a column of the site's file "
                f"(it holds {', '.join(data.columns)})",
                column=label,
            )
        columns = {c: np.asarray(data[c]) for c in data.columns}
        features = [c for c in data.columns if c != label]
        if not features:
            raise DataError(f"ada-boost needs feature columns besides the label '{label}'")
        for name in features:
            col = columns[name]
            if col.dtype.kind not in "biuf":
                raise DataError(
                    f"ada-boost uses every column but '{label}' as a number, "
                    f"but column {name} holds text",
                    column=name,
                )
        y = columns[label]
        x = np.column_stack([columns[c] for c in features])
        check_min_count(len(y), ctx.min_count, "the site's rows")
        seed = _ada_seed(params, ctx.seed, ctx.site)
        split_seed = seed if params.random_state is None else params.random_state
        try:
            x_train, x_test, y_train, y_test = split_like_the_app(
                x, y, params.test_size, split_seed
            )
        except ValueError as exc:
            raise DataError(f"ada-boost: the app's stratified split fails: {exc}") from None
        model = fit_boosted(
            x_train,
            y_train,
            n_estimators=params.n_estimators,
            learning_rate=params.learning_rate,
            random_state=seed,
            algorithm=params.algorithm,
        )
        local_score = fc_score(params.metric, y_test, model.predict(x_test))
        ctx.state.update(
            x_test=x_test, y_test=y_test, classes=model.classes, local_score=local_score
        )
        return LocalModel(
            features=features,
            classes=[str(v) for v in category_labels(model.classes)],
            stumps=_pack(model.stumps),
            weights=model.weights,
            n_train=len(y_train),
            n_test=len(y_test),
        )

    def aggregate_fit(
        self, replies: Mapping[str, LocalModel], params: AdaBoostParams, ctx: CoordinatorContext
    ) -> Continue:
        order = [s for s in ctx.sites if s in replies] or list(replies)
        lead = params.lead_site or order[0]
        if lead not in replies:
            raise AppError(
                f"ada-boost: lead_site '{lead}' is not a site of this study "
                f"(sites: {', '.join(order)})"
            )
        order = [lead] + [s for s in order if s != lead]
        first = replies[lead]
        for site in order[1:]:
            reply = replies[site]
            if reply.features != first.features:
                raise DataError(
                    f"ada-boost: site {site}'s feature columns ({', '.join(reply.features)}) "
                    f"differ from site {lead}'s ({', '.join(first.features)}); the app "
                    "matches them by position: give every site the same columns in one order"
                )
            if reply.classes != first.classes:
                raise DataError(
                    f"ada-boost: site {site} holds the classes {reply.classes}, site {lead} "
                    f"{first.classes}; the app's combined model needs the same classes at "
                    "every site"
                )
        n_features, k = len(first.features), len(first.classes)
        stumps = [
            stump for site in order for stump in _unpack(replies[site].stumps, n_features, k, site)
        ]
        weights = np.asarray(first.weights, dtype=np.float64)
        if weights.shape != (params.n_estimators,) or not np.isfinite(weights).all():
            raise AppError(f"ada-boost: {lead} sent malformed estimator weights")
        ctx.state.update(
            order=order,
            features=first.features,
            classes=first.classes,
            per_site={s: len(replies[s].stumps.node_counts) for s in order},
            n_train={s: replies[s].n_train for s in order},
            n_stumps=len(stumps),
        )
        return Continue(
            "evaluate", GlobalModel(classes=first.classes, stumps=_pack(stumps), weights=weights)
        )

    # phase 2: every site scores the global model on its test rows and writes the app's file
    def local_evaluate(
        self, data: Table, params: AdaBoostParams, request: GlobalModel, ctx: SiteContext
    ) -> Evaluated:
        state = ctx.state
        x_test, y_test, classes = state["x_test"], state["y_test"], state["classes"]
        if [str(v) for v in category_labels(classes)] != list(request.classes):
            raise DataError(
                f"ada-boost: the global model's classes {list(request.classes)} are not this "
                "site's; every site needs the same classes"
            )
        stumps = _unpack(request.stumps, x_test.shape[1], len(classes), "the coordinator")
        model = BoostedModel(stumps, request.weights, classes, x_test.shape[1], params.algorithm)
        y_pred = model.predict(x_test)
        global_score = fc_score(params.metric, y_test, y_pred)
        local_score = state["local_score"]
        ctx.outputs[EVAL_NAME] = eval_csv(params.metric, local_score, global_score)
        return Evaluated(
            local_score=local_score,
            global_score=global_score,
            n_test=len(y_test),
            correct=int(np.count_nonzero(y_pred == y_test)),
        )

    def aggregate_evaluate(
        self, replies: Mapping[str, Evaluated], params: AdaBoostParams, ctx: CoordinatorContext
    ) -> Done:
        state = ctx.state
        order = state["order"]
        n_test = sum(replies[s].n_test for s in order)
        if params.algorithm == "SAMME":
            ctx.notes.append(
                f"algorithm = 'SAMME' (scikit-learn ≥ 1.6): the app's global model pairs its "
                f"stumps with {order[0]}'s {params.n_estimators} estimator weights, so only "
                f"{order[0]}'s stumps count"
            )
        if not params.random_state:
            ctx.notes.append(
                f"random_state = {params.random_state}: the app leaves AdaBoost unseeded; each "
                "site seeded it from the study's seed and its name"
            )
        return Done(
            {
                "metric": params.metric,
                "algorithm": params.algorithm,
                "missing_data": params.missing_data,
                "features": state["features"],
                "classes": state["classes"],
                "lead_site": order[0],
                "n_stumps": state["n_stumps"],
                "sites": {
                    s: {
                        "local_model": replies[s].local_score,
                        "global_model": replies[s].global_score,
                        "n_train": state["n_train"][s],
                        "n_test": replies[s].n_test,
                        "stumps": state["per_site"][s],
                    }
                    for s in order
                },
                "n_test": n_test,
                "test_accuracy": sum(replies[s].correct for s in order) / n_test,
            }
        )

    # the centralized run: one client holding every row
    def centralized(self, pooled: pd.DataFrame, params: AdaBoostParams) -> dict[str, Any]:
        """scikit-learn's ``AdaBoostClassifier`` on the pooled rows, split and seeded as the app
        does, scored on its own test rows (the installed scikit-learn's algorithm)."""
        from sklearn.ensemble import AdaBoostClassifier

        frame = pooled.dropna()  # the sites' rows without gaps, as the sites hold them
        y = frame[params.label_col].to_numpy()
        x = frame.drop(columns=[params.label_col]).to_numpy()
        x_train, x_test, y_train, y_test = split_like_the_app(
            x, y, params.test_size, params.random_state
        )
        model = AdaBoostClassifier(
            n_estimators=params.n_estimators,
            learning_rate=float(params.learning_rate),
            random_state=params.random_state or 0,
        ).fit(x_train, y_train)
        accuracy = float(np.mean(model.predict(x_test) == y_test))
        return {
            "features": [str(c) for c in frame.columns if c != params.label_col],
            "classes": [str(v) for v in category_labels(np.unique(y))],
            "test_accuracy": accuracy,
        }

    def comparable(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "features": result["features"],
            "classes": result["classes"],
            "test_accuracy": result["test_accuracy"],
        }
