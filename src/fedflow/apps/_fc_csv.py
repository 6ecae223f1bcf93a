"""Delimited text as ``pandas.DataFrame.to_csv`` writes it, for the FeatureCloud twins' outputs.

The FeatureCloud apps write their results with ``DataFrame.to_csv``; a twin writes the same bytes
without importing pandas at the site: floats in their shortest round-trip form (``repr``: 0.1,
1e-20, 1e+16, -0.0, inf), NaN as an empty field, integers and text as they are, minimal quoting
(a field holding the separator, a quote or a line break is quoted; a row of one empty field is
written ``""``), ``\\n`` line ends. The tests compare these bytes with pandas' own.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["cell", "frame_csv"]


def cell(value: Any) -> str:
    """Return ``value`` as pandas writes one cell."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def frame_csv(
    columns: Sequence[Any],
    values: np.ndarray | Sequence[np.ndarray],
    *,
    sep: str,
    index: Sequence[Any] | None = None,
    header: bool = True,
) -> bytes:
    """Return the bytes of ``DataFrame(values, index=index, columns=columns).to_csv(sep=sep,
    header=header, index=index is not None)``.

    ``values`` is a 2-D array (rows × columns) or one 1-D array per column (columns of different
    types, e.g. integer predictions).
    """
    if isinstance(values, np.ndarray) and values.ndim == 2:
        cols = [values[:, j] for j in range(values.shape[1])]
    else:
        cols = [np.asarray(c) for c in values]
    if len(cols) != len(columns):
        raise ValueError(f"{len(columns)} column names for {len(cols)} columns")
    n = len(cols[0]) if cols else (len(index) if index is not None else 0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=sep, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    if header:
        writer.writerow(([""] if index is not None else []) + [cell(c) for c in columns])
    lists = [c.tolist() for c in cols]
    labels = list(index) if index is not None else None
    for i in range(n):
        row = [cell(c[i]) for c in lists]
        writer.writerow(([cell(labels[i])] if labels is not None else []) + row)
    return buffer.getvalue().encode("utf-8")
