"""A small numpy CART (classification and regression trees) and a forest of such trees as arrays.

Sites grow trees with ``grow_tree`` (numpy only: sites run a lean process); trees travel and are
stored as five arrays per tree, never as pickled objects:

    feature    int64   (n_nodes,)             feature index tested at the node, -1 at a leaf
    threshold  float64 (n_nodes,)             a row goes left when ``x[feature] <= threshold``
    left       int64   (n_nodes,)             index of the left child in this tree, -1 at a leaf
    right      int64   (n_nodes,)             index of the right child in this tree, -1 at a leaf
    value      float64 (n_nodes, n_outputs)   class probabilities, or the mean (n_outputs = 1)

Node 0 is the root and every child has a larger index than its parent, which ``Forest`` checks
so that no stored or received tree can make prediction loop.

Growth follows scikit-learn's ``DecisionTreeClassifier`` / ``DecisionTreeRegressor`` as used by its
random forests: a bootstrap sample becomes integer row weights on the distinct rows drawn; at each
node ``max_features`` features are drawn among those not constant in the node (more are tried when
none of them allows a valid split); the split maximises the decrease of the weighted Gini impurity
(classification) or of the weighted squared error (regression); thresholds are midpoints between
adjacent distinct values. ``min_samples_leaf`` counts distinct rows, so no leaf (and no node)
describes fewer rows than that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Forest", "Tree", "bootstrap_weights", "grow_tree"]

_CHUNK = 1 << 20  # (row, tree) pairs traversed at once by Forest.apply


@dataclass(frozen=True)
class Tree:
    """One tree as arrays (see the module docstring) plus its normalised feature importances."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    importances: np.ndarray

    @property
    def n_nodes(self) -> int:
        """The number of nodes."""
        return len(self.feature)


def bootstrap_weights(n: int, rng: np.random.Generator, min_rows: int) -> np.ndarray:
    """Return bootstrap counts for ``n`` rows (n draws with replacement).

    When fewer than ``min_rows`` distinct rows are drawn, every row gets weight 1 instead, so a
    tree that cannot split never describes fewer rows than the site allows.
    """
    counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
    if np.count_nonzero(counts) < min_rows:
        return np.ones(n)
    return counts


def grow_tree(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    *,
    n_classes: int,
    max_depth: int | None,
    min_samples_leaf: int,
    max_features: int,
    rng: np.random.Generator,
) -> Tree:
    """Return a tree grown on the rows of ``x`` with positive ``weight``.

    ``n_classes`` > 0 grows a classification tree on integer class codes ``y`` in
    ``range(n_classes)`` (Gini); 0 grows a regression tree on float ``y`` (squared error).
    """
    keep = weight > 0
    x = np.ascontiguousarray(x[keep], dtype=np.float64)
    w = np.asarray(weight[keep], dtype=np.float64)
    n_features = x.shape[1]
    if n_classes > 0:
        codes = np.asarray(y[keep], dtype=np.int64)
        target = np.zeros((len(codes), n_classes))
        target[np.arange(len(codes)), codes] = w  # weighted one-hot
        y_reg = np.empty(0)
    else:
        y_reg = np.asarray(y[keep], dtype=np.float64)
        target = (w * y_reg)[:, None]
    depth_limit = max_depth if max_depth is not None else np.iinfo(np.int64).max
    msl = max(int(min_samples_leaf), 1)

    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    value: list[np.ndarray] = []
    importances = np.zeros(n_features)

    def new_node(rows: np.ndarray) -> tuple[int, float, float]:
        wsum = float(w[rows].sum())
        stats = target[rows].sum(axis=0)
        if n_classes > 0:
            val = stats / wsum
            impurity = 1.0 - float(np.sum(val**2))
        else:
            val = stats / wsum
            impurity = float(np.sum(w[rows] * y_reg[rows] ** 2) / wsum - val[0] ** 2)
        feature.append(-1)
        threshold.append(0.0)
        left.append(-1)
        right.append(-1)
        value.append(val)
        return len(feature) - 1, wsum, max(impurity, 0.0)

    root, root_w, root_imp = new_node(np.arange(len(x)))
    stack = [(np.arange(len(x)), root, 0, root_w, root_imp)]
    while stack:
        rows, node, depth, wsum, impurity = stack.pop()
        if depth >= depth_limit or len(rows) < 2 * msl or _is_pure(rows, target, y_reg, n_classes):
            continue
        split = _best_split(x, rows, w, target, msl, max_features, rng)
        if split is None:
            continue
        j, thr = split
        go_left = x[rows, j] <= thr
        rows_l, rows_r = rows[go_left], rows[~go_left]
        node_l, w_l, imp_l = new_node(rows_l)
        node_r, w_r, imp_r = new_node(rows_r)
        feature[node], threshold[node], left[node], right[node] = j, thr, node_l, node_r
        importances[j] += wsum * impurity - w_l * imp_l - w_r * imp_r
        stack.append((rows_r, node_r, depth + 1, w_r, imp_r))
        stack.append((rows_l, node_l, depth + 1, w_l, imp_l))
    total = importances.sum()
    if total > 0:
        importances = importances / total
    return Tree(
        feature=np.asarray(feature, dtype=np.int64),
        threshold=np.asarray(threshold, dtype=np.float64),
        left=np.asarray(left, dtype=np.int64),
        right=np.asarray(right, dtype=np.int64),
        value=np.vstack(value),
        importances=importances,
    )


def _is_pure(rows: np.ndarray, target: np.ndarray, y_reg: np.ndarray, n_classes: int) -> bool:
    if n_classes > 0:
        return int(np.count_nonzero(target[rows].sum(axis=0))) <= 1
    values = y_reg[rows]
    return bool(values.min() == values.max())


def _best_split(
    x: np.ndarray,
    rows: np.ndarray,
    w: np.ndarray,
    target: np.ndarray,
    msl: int,
    max_features: int,
    rng: np.random.Generator,
) -> tuple[int, float] | None:
    """Return (feature, threshold) of the best valid split of ``rows``, or None."""
    xs = x[rows]
    varying = np.flatnonzero(xs.max(axis=0) > xs.min(axis=0))
    if len(varying) == 0:
        return None
    order = rng.permutation(varying)
    for batch in (order[:max_features], order[max_features:]):
        if len(batch) == 0:
            continue
        found = _best_in(xs[:, batch], w[rows], target[rows], msl)
        if found is not None:
            column, thr = found
            return int(batch[column]), thr
    return None


def _best_in(
    xs: np.ndarray, w: np.ndarray, target: np.ndarray, msl: int
) -> tuple[int, float] | None:
    """Best split over the columns of ``xs``: (column, threshold), or None when none is valid.

    A split after sorted position i puts rows 0..i left. The criterion to maximise is
    Σ_k S_Lk²/W_L + Σ_k S_Rk²/W_R (S: weighted class counts or weighted target sums), which is
    the impurity decrease up to terms that do not depend on the split.
    """
    m = len(xs)
    order = np.argsort(xs, axis=0, kind="stable")
    sorted_x = np.take_along_axis(xs, order, axis=0)
    w_left = np.cumsum(w[order], axis=0)[:-1]  # (m-1, f)
    w_total = w.sum()
    w_right = w_total - w_left
    s_left = np.cumsum(target[order], axis=0)[:-1]  # (m-1, f, k)
    s_right = target.sum(axis=0) - s_left
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (s_left**2).sum(axis=-1) / w_left + (s_right**2).sum(axis=-1) / w_right
    valid = sorted_x[1:] > sorted_x[:-1]
    positions = np.arange(1, m)[:, None]  # rows on the left
    valid &= (positions >= msl) & (m - positions >= msl)
    score = np.where(valid, score, -np.inf)
    best = int(np.argmax(score))
    pos, column = divmod(best, xs.shape[1])
    if not np.isfinite(score[pos, column]):
        return None
    lo, hi = sorted_x[pos, column], sorted_x[pos + 1, column]
    thr = lo / 2.0 + hi / 2.0
    if not lo <= thr < hi:  # adjacent floats: the midpoint rounds onto hi
        thr = lo
    return column, float(thr)


class Forest:
    """Trees concatenated into flat arrays with global child indices, for fast prediction.

    Raises ValueError (with a short reason) when the arrays do not describe valid trees.
    """

    def __init__(self, trees: Sequence[Tree], n_features: int) -> None:
        if not trees:
            raise ValueError("a forest needs at least one tree")
        n_outputs = trees[0].value.shape[1] if trees[0].value.ndim == 2 else -1
        offsets = np.cumsum([0] + [t.n_nodes for t in trees])
        for i, t in enumerate(trees):
            _check_tree(t, n_features, n_outputs, i)
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.roots = offsets[:-1].astype(np.int64)
        self.feature = np.concatenate([t.feature for t in trees])
        self.threshold = np.concatenate([t.threshold for t in trees])
        shift = [np.where(t.left >= 0, off, 0) for t, off in zip(trees, offsets, strict=False)]
        self.left = np.concatenate([t.left + s for t, s in zip(trees, shift, strict=True)])
        self.right = np.concatenate([t.right + s for t, s in zip(trees, shift, strict=True)])
        self.value = np.vstack([t.value for t in trees])
        self.depth = max(_depth(t) for t in trees)

    @property
    def n_trees(self) -> int:
        """The number of trees."""
        return len(self.roots)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return the (rows × trees) global index of the leaf each row reaches in each tree."""
        x = np.asarray(x, dtype=np.float64)
        n, t = len(x), self.n_trees
        out = np.empty((n, t), dtype=np.int64)
        step = max(1, _CHUNK // t)
        for start in range(0, n, step):
            block = x[start : start + step]
            node = np.broadcast_to(self.roots, (len(block), t)).copy()
            rows = np.arange(len(block))[:, None]
            for _ in range(self.depth):
                f = self.feature[node]
                inner = f >= 0
                go_left = block[rows, np.maximum(f, 0)] <= self.threshold[node]
                node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            out[start : start + step] = node
        return out

    def predict(
        self, x: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the mean leaf value per row (rows × outputs) and how many trees were averaged.

        ``mask`` (rows × trees, bool) limits each row to some trees (out-of-bag prediction); rows
        with no tree get NaN. Rows are processed in blocks, so memory stays bounded.
        """
        mean = np.empty((len(x), self.n_outputs))
        count = np.empty(len(x), dtype=np.int64)
        for rows in self._blocks(len(x)):
            leaves = self.apply(x[rows])
            mean[rows], count[rows] = self.average(leaves, None if mask is None else mask[rows])
        return mean, count

    def predict_with_mask(
        self, x: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``predict(x)`` and ``predict(x, mask)`` at once: (mean, masked mean, count)."""
        full = np.empty((len(x), self.n_outputs))
        part = np.empty((len(x), self.n_outputs))
        count = np.empty(len(x), dtype=np.int64)
        for rows in self._blocks(len(x)):
            leaves = self.apply(x[rows])
            full[rows], _ = self.average(leaves)
            part[rows], count[rows] = self.average(leaves, mask[rows])
        return full, part, count

    def _blocks(self, n: int) -> list[slice]:
        step = max(1, _CHUNK // self.n_trees)
        return [slice(start, start + step) for start in range(0, n, step)]

    def average(
        self, leaves: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``predict``, from the leaves that ``apply`` returned."""
        n = len(leaves)
        total = np.zeros((n, self.n_outputs))
        if mask is None:
            for j in range(self.n_trees):
                total += self.value[leaves[:, j]]
            return total / self.n_trees, np.full(n, self.n_trees)
        for j in range(self.n_trees):
            total += self.value[leaves[:, j]] * mask[:, j, None]
        count = mask.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return total / count[:, None], count


def _check_tree(t: Tree, n_features: int, n_outputs: int, i: int) -> None:
    n = t.n_nodes
    where = f"tree {i}"
    if n == 0:
        raise ValueError(f"{where} has no nodes")
    for name in ("threshold", "left", "right"):
        if getattr(t, name).shape != (n,):
            raise ValueError(f"{where}: '{name}' has {getattr(t, name).shape}, expected ({n},)")
    if t.value.ndim != 2 or t.value.shape != (n, n_outputs) or n_outputs < 1:
        raise ValueError(f"{where}: 'value' has shape {t.value.shape}, expected ({n}, {n_outputs})")
    if not (np.isfinite(t.threshold).all() and np.isfinite(t.value).all()):
        raise ValueError(f"{where} holds non-finite numbers")
    leaf = t.feature < 0
    if (t.feature >= n_features).any() or (t.feature[leaf] != -1).any():
        raise ValueError(f"{where}: feature index out of range 0..{n_features - 1}")
    idx = np.arange(n)
    for name in ("left", "right"):
        child = getattr(t, name)
        if (child[leaf] != -1).any():
            raise ValueError(f"{where}: a leaf has a '{name}' child")
        inner_child = child[~leaf]
        if (inner_child <= idx[~leaf]).any() or (inner_child >= n).any():
            raise ValueError(f"{where}: '{name}' child indices must follow their parent")


def _depth(t: Tree) -> int:
    depth = np.zeros(t.n_nodes, dtype=np.int64)
    for node in range(t.n_nodes):  # children follow parents, so one pass suffices
        if t.feature[node] >= 0:
            depth[t.left[node]] = depth[t.right[node]] = depth[node] + 1
    return int(depth.max())
