"""``fedflow predict``: score new data with the model a run saved in its run directory.

Only ``random-forest`` runs save a model (``forest.json``, format in docs/apps/random-forest.md).
``predict`` reads ``result.json`` to check which app ran, loads the forest, reads the data files
(CSV, TSV or Parquet, with the node agent's loader), checks that every file holds the forest's
features as complete numeric columns, and returns one row of predictions per data row, in file
order: ``prediction`` and, for classification, ``probability_<class>`` for every class. The
predictions are written as CSV to ``out``, or to standard output when no ``out`` is given.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedflow.apps.base import Table
from fedflow.apps.forest import ForestModel, decode_forest
from fedflow.errors import AppError, DataError

__all__ = ["format_csv", "load_model", "predict"]

_MODEL_FILE = "forest.json"


def load_model(run_dir: Path) -> ForestModel:
    """Return the forest saved in ``run_dir``.

    Raises DataError when the directory, ``result.json`` or ``forest.json`` is missing or corrupt,
    and AppError when the run is not a ``random-forest`` run.
    """
    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist", file=str(run_dir))
    try:
        doc = json.loads(result_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{result_path} does not exist (not a finished run directory?)", file=str(result_path)
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{result_path}: cannot be read: {exc}", file=str(result_path)) from None
    app = doc.get("app") if isinstance(doc, dict) else None
    if app != "random-forest":
        raise AppError(
            f"{result_path}: the run used app {app!r}; only random-forest runs save a model "
            "that can predict"
        )
    model_path = run_dir / _MODEL_FILE
    try:
        content = model_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{model_path} does not exist", file=str(model_path)) from None
    except OSError as exc:
        raise DataError(
            f"{model_path}: cannot be read: {exc.strerror}", file=str(model_path)
        ) from None
    return decode_forest(content, source=str(model_path))


def _feature_matrix(path: Path, features: Sequence[str]) -> np.ndarray:
    """Return the float64 feature matrix of one data file; DataError names file and column."""
    from fedflow.node.data import read_table

    loaded = read_table([path])
    table = loaded.table
    for name in features:
        if name not in table:
            raise DataError(
                f"{path}: column '{name}' is missing (the forest needs {', '.join(features)})",
                file=str(path),
                column=name,
            )
        if name in loaded.missing:
            count = int(loaded.missing[name].sum())
            raise DataError(
                f"{path}: column '{name}' has {count} missing value(s); the forest cannot score them",
                file=str(path),
                column=name,
            )
        if not table.is_numeric(name):
            raise DataError(f"{path}: column '{name}' is not numeric", file=str(path), column=name)
    x = table.matrix(list(features))
    if not np.isfinite(x).all():
        column = features[int(np.flatnonzero(~np.isfinite(x).all(axis=0))[0])]
        raise DataError(
            f"{path}: column '{column}' holds infinite values", file=str(path), column=column
        )
    return x


def predict(run_dir: Path, data: Sequence[Path], *, out: Path | None = None) -> Table:
    """Score ``data`` (one or more files) with the forest of ``run_dir``; return the predictions.

    Writes the predictions as CSV to ``out`` (standard output when None). Raises DataError naming
    the file (and column) for unreadable or unsuitable inputs, AppError for a run without a forest.
    """
    if not data:
        raise DataError("no data files given to predict")
    model = load_model(Path(run_dir))
    blocks = [_feature_matrix(Path(p), model.features) for p in data]
    x = np.vstack(blocks) if blocks else np.empty((0, len(model.features)))
    output = model.predict(x)
    columns: dict[str, np.ndarray] = {}
    if model.task == "classification":
        classes = list(model.classes or [])
        labels = np.array(classes, dtype=object)[output.argmax(axis=1)]
        if all(isinstance(c, int) for c in classes):
            columns["prediction"] = labels.astype(np.int64)
        else:
            columns["prediction"] = labels
        for j, label in enumerate(classes):
            columns[f"probability_{label}"] = output[:, j]
    else:
        columns["prediction"] = output
    table = Table(columns)
    text = format_csv(table)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write {out}: {exc.strerror}", file=str(out)) from None
    return table


def format_csv(table: Table) -> str:
    """Return ``table`` as CSV text (header, then one line per row; floats round-trip exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    cells = [
        [repr(float(v)) if table[c].dtype.kind == "f" else str(v) for v in table[c].tolist()]
        for c in table.columns
    ]
    writer.writerows(zip(*cells, strict=True))
    return buffer.getvalue()
