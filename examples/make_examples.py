"""Write the small example studies in examples/<app>/ from datasets shipped with scikit-learn,
statsmodels and lifelines (run once; the CSVs are committed so examples run from a clean checkout).

    python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def sklearn_frame(loader: str, target: str | None = None) -> pd.DataFrame:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader)(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in frame.columns]
    if target:
        frame = frame.rename(columns={"target": target})
    return frame


def split(frame: pd.DataFrame, folder: str, names: tuple[str, ...], rows: int | None = None) -> None:
    out = HERE / folder
    out.mkdir(exist_ok=True)
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    if rows:
        shuffled = shuffled.head(rows)
    for name, part in zip(names, np.array_split(np.arange(len(shuffled)), len(names)), strict=True):
        shuffled.iloc[part].to_csv(out / f"{name}.csv", index=False, float_format="%.6g")


def main() -> None:
    import statsmodels.api as sm
    from lifelines.datasets import load_gbsg2, load_rossi

    sites = ("north", "south")
    randhie = sm.datasets.randhie.load_pandas().data
    split(randhie[["mdvis", "lpi"]], "stats", sites, rows=600)
    cols = ["mdvis", "lncoins", "idp", "lpi", "fmde", "physlm", "disea", "hlthg", "hlthf", "hlthp"]
    split(randhie[cols], "glm", sites, rows=1000)
    gbsg2 = load_gbsg2()
    split(gbsg2[["horTh", "cens", "tsize"]], "crosstab", sites)
    split(gbsg2[["horTh", "tsize"]], "t-test", sites)
    rossi = load_rossi()
    split(rossi[["week", "arrest", "fin"]], "kaplan-meier", sites)
    split(rossi, "cox", sites)
    split(sklearn_frame("load_iris").drop(columns="target"), "kmeans", sites)
    wine = sklearn_frame("load_wine").drop(columns="target")
    split(wine, "pca", sites)
    diabetes = sklearn_frame("load_diabetes", target="progression")
    split(diabetes, "linear-regression", sites)
    spector = sm.datasets.spector.load_pandas().data
    split(spector, "logistic-regression", sites)
    cancer = sklearn_frame("load_breast_cancer", target="benign")
    cancer["malignant"] = 1 - cancer.pop("benign")
    keep = ["mean_radius", "mean_texture", "mean_smoothness", "mean_concavity", "malignant"]
    split(cancer[keep], "random-forest", ("berlin", "vienna"))


if __name__ == "__main__":
    main()
