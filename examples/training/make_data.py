"""Write the digits data that ships with scikit-learn as three sites' CSV files (and new.csv, 30
rows to score with ``fedflow predict``): a seeded, label-balanced split.

    python make_data.py
"""

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent


def main() -> None:
    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype(int), columns=[f"p{i}" for i in range(64)])
    frame["digit"] = digits.target
    order = np.random.default_rng(0).permutation(len(frame))
    frame.iloc[order[:30]].drop(columns="digit").to_csv(HERE / "new.csv", index=False)
    rest = order[30:]
    for k, name in enumerate(("hospital_a", "hospital_b", "hospital_c")):
        frame.iloc[np.sort(rest[k::3])].to_csv(HERE / f"{name}.csv", index=False)
        print(f"{name}.csv", len(rest[k::3]), "rows")


if __name__ == "__main__":
    main()
