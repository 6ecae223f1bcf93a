"""The digits data split the training benchmarks share: scikit-learn's 1,797 8×8 digits, pixels
scaled to [0, 1], shuffled with a seed; a central test set held out, the rest dealt to n sites.

Imported by benchmarks/training_vs_flower.py (fedflow's environment) and by
benchmarks/peers/flower_digits.py (Flower's), so both frameworks see the same files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

FEATURES = [f"p{i:02d}" for i in range(64)]
TARGET = "digit"


def write_split(out: Path, sites: int, seed: int, test: float = 0.2) -> tuple[list[Path], Path]:
    """Write ``site01.csv`` … and ``test.csv`` under ``out``; return (site files, test file).

    Rows are shuffled with ``seed``; the first ``test`` fraction is the test set, the rest is
    dealt to the sites in near-equal contiguous parts (IID)."""
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(y))
    held = int(round(test * len(y)))
    out.mkdir(parents=True, exist_ok=True)
    test_path = out / "test.csv"
    _write(test_path, x[order[:held]], y[order[:held]])
    paths = []
    for i, rows in enumerate(np.array_split(order[held:], sites), start=1):
        path = out / f"site{i:02d}.csv"
        _write(path, x[rows], y[rows])
        paths.append(path)
    return paths, test_path


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (features as float32 rows, digits as int64) of a file written by write_split."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64)
    if header != [*FEATURES, TARGET]:
        raise ValueError(f"{path}: columns are not p00..p63, digit")
    return body[:, :64].astype(np.float32), body[:, 64].astype(np.int64)


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*FEATURES, TARGET])
        for row, label in zip(x, y, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])
