"""Write one pooled dataset, shipped inside an installed package, as a CSV (no download).

    python pooled_data.py DATASET OUT.csv

DATASET is one of ``wine``, ``breast_cancer``, ``iris`` (scikit-learn) or ``rossi`` (lifelines).
Column names follow examples/make_examples.py: scikit-learn's names with `` (cm)`` dropped and
spaces as underscores; the label is ``cultivar`` (wine), ``malignant`` (breast_cancer, 1 for a
malignant tumour) or ``species`` (iris). rossi is lifelines' recidivism data as it ships.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def sklearn_frame(loader: str, label: str) -> pd.DataFrame:
    import sklearn.datasets

    frame = getattr(sklearn.datasets, loader)(as_frame=True).frame.copy()
    frame.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in frame.columns]
    return frame.rename(columns={"target": label})


def load(name: str) -> pd.DataFrame:
    if name == "wine":
        return sklearn_frame("load_wine", "cultivar")
    if name == "iris":
        return sklearn_frame("load_iris", "species")
    if name == "breast_cancer":
        frame = sklearn_frame("load_breast_cancer", "benign")
        frame["malignant"] = 1 - frame.pop("benign")  # scikit-learn codes benign as 1
        return frame
    if name == "rossi":
        from lifelines.datasets import load_rossi

        return load_rossi()
    raise SystemExit(f"pooled_data.py: unknown dataset {name!r} (wine, breast_cancer, iris, rossi)")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: pooled_data.py DATASET OUT.csv")
    name, out = argv[0], Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    load(name).to_csv(out, index=False)


if __name__ == "__main__":
    main(sys.argv[1:])
