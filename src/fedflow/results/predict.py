"""``fedflow predict``: score new data with the model a run saved in its run directory.

Which app ran is read from ``result.json``; the app itself loads its model (the ``Predictor``
hook: a ``load_model`` classmethod on the app class, given the run directory's files by name).
Today ``random-forest`` is the one app that saves a model (``forest.json``, format in
docs/apps/random-forest.md); a run of any other app is refused with a clear message. ``predict``
reads the data files (CSV, TSV or Parquet, with the node agent's loader), checks that every file
holds the model's features as complete numeric columns, and returns one row of predictions per
data row, in file order: the model's named columns (for the forest: ``prediction`` and, for
classification, ``probability_<class>`` for every class). The predictions are written as CSV to
``out``, or to standard output when no ``out`` is given.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedflow.apps.base import Table
from fedflow.errors import AppError, DataError

__all__ = ["Model", "Predictor", "RunArtifacts", "format_csv", "load_model", "predict"]


@runtime_checkable
class Model(Protocol):
    """A saved model that scores rows: the feature columns it reads, in order, and the named
    output columns it returns for a (rows × features) float matrix."""

    @property
    def features(self) -> Sequence[str]: ...

    def predict_columns(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


class Predictor(Protocol):
    """An app whose runs save a model: its class loads that model from the run's files."""

    @classmethod
    def load_model(cls, artifacts: Mapping[str, bytes], where: str = "") -> Model: ...


class RunArtifacts(Mapping[str, bytes]):
    """The files of a run directory by name, read when asked for.

    A missing or unreadable file raises DataError naming its path (so an app's ``load_model``
    need not know about files).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def __getitem__(self, name: str) -> bytes:
        path = self.run_dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path} does not exist", file=str(path)) from None
        except OSError as exc:
            raise DataError(f"{path}: cannot be read: {exc.strerror}", file=str(path)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.name for p in self.run_dir.iterdir() if p.is_file()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _run_app(run_dir: Path) -> str:
    """Return the app name ``result.json`` of ``run_dir`` records; DataError when unreadable."""
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
    if not isinstance(app, str):
        raise DataError(f"{result_path} names no app", file=str(result_path))
    return app


def _predicting_apps() -> list[str]:
    from fedflow.apps import available_apps, get_app

    return [n for n in available_apps() if callable(getattr(type(get_app(n)), "load_model", None))]


def load_model(run_dir: Path) -> Model:
    """Return the model saved in ``run_dir``, loaded by the app that ran there.

    Raises DataError when the directory, ``result.json`` or the model file is missing or corrupt,
    and AppError when the run's app saves no model (or cannot be loaded).
    """
    from fedflow.apps import get_app

    run_dir = Path(run_dir)
    name = _run_app(run_dir)
    app: Any = type(get_app(name))
    loader = getattr(app, "load_model", None)
    if not callable(loader):
        raise AppError(
            f"{run_dir / 'result.json'}: the run used app {name!r}, which saves no model that "
            f"can predict (apps that do: {', '.join(_predicting_apps())})"
        )
    model = loader(RunArtifacts(run_dir), str(run_dir))
    if not isinstance(model, Model):
        raise AppError(f"app {name!r}: load_model returned {type(model).__name__}, not a model")
    return model


def _feature_matrix(path: Path, features: Sequence[str]) -> np.ndarray:
    """Return the float64 feature matrix of one data file; DataError names file and column."""
    from fedflow.node.data import read_table

    loaded = read_table([path])
    table = loaded.table
    for name in features:
        if name not in table:
            raise DataError(
                f"{path}: column '{name}' is missing (the model needs {', '.join(features)})",
                file=str(path),
                column=name,
            )
        if name in loaded.missing:
            count = int(loaded.missing[name].sum())
            raise DataError(
                f"{path}: column '{name}' has {count} missing value(s); the model cannot score them",
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
    """Score ``data`` (one or more files) with the model of ``run_dir``; return the predictions.

    Writes the predictions as CSV to ``out`` (standard output when None). Raises DataError naming
    the file (and column) for unreadable or unsuitable inputs, AppError for a run without a model.
    """
    if not data:
        raise DataError("no data files given to predict")
    model = load_model(Path(run_dir))
    features = list(model.features)
    blocks = [_feature_matrix(Path(p), features) for p in data]
    x = np.vstack(blocks) if blocks else np.empty((0, len(features)))
    columns = model.predict_columns(x)
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
