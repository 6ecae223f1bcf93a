"""Category labels: what a group, level or cell is called in results, in one rule for every app.

A category value's label is text. Integers (and booleans, as 0 / 1) are written as their digits;
floats with an integral value below 2⁵³ in size likewise, without ``.0``; other floats in their
shortest round-trip form (``0.5``, ``1e+20``, ``nan``); text as it is. So the number 1, the float
1.0 and the text "1" are one category, whichever type a site's file gave the column.

``category_labels`` labels a site's whole column (vectorised); ``value_label`` labels one value (a
parameter such as ``groups = [1, "0"]``, or a pooled value in a centralized twin) by the same
code, so the two can never disagree. crosstab, t-test and kaplan-meier's groups use them.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["category_labels", "value_label"]

_EXACT = 2.0**53
"""Floats below this in size with an integral value are labelled by their integer digits."""


def category_labels(values: np.ndarray) -> np.ndarray:
    """Return the label of every value of a column as a fixed-width text array (module doc)."""
    values = np.asarray(values)
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.int64).astype(str)
    if kind in "iu":
        return values.astype(str)
    if kind == "f":
        values = values.astype(np.float64, copy=False)
        labels = values.astype(str)
        integral = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < _EXACT)
        if integral.any():
            whole = values[integral].astype(np.int64).astype(str)
            labels = labels.astype(f"<U{max(labels.dtype.itemsize, whole.dtype.itemsize) // 4}")
            labels[integral] = whole
        return labels
    if kind == "O":
        return np.array([value_label(v) for v in values.tolist()], dtype=str).reshape(values.shape)
    return values.astype(str)


def value_label(value: Any) -> str:
    """Return the label of one category value: what ``category_labels`` calls it in a column."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return str(category_labels(np.array([float(value)]))[0])
    return str(value)
