"""Fidelity cases of the learning apps: glm (statsmodels), pca and kmeans (scikit-learn)."""

from tests.apps.fidelity import Case

_BC = ["mean_radius", "mean_texture", "mean_smoothness", "mean_concavity"]
_BC10 = [
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
]
_STAR = ["LOWINC", "PERASIAN", "PERBLACK", "PERHISP", "AVYRSEXP", "PTRATIO"]
_WINE = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280/od315_of_diluted_wines",
    "proline",
]
_IRIS = ["sepal_length_(cm)", "sepal_width_(cm)", "petal_length_(cm)", "petal_width_(cm)"]

_GLM = [
    Case("glm", "diabetes", {"target": "target", "family": "gaussian"}),
    Case("glm", "scotland", {"target": "YES", "family": "gaussian"}, min_count=1),
    Case("glm", "breast_cancer", {"target": "target", "features": _BC, "family": "binomial"}),
    Case("glm", "spector", {"target": "GRADE", "family": "binomial"}, min_count=1),
    Case("glm", "spector", {"target": "GRADE", "family": "binomial", "intercept": False}, 1),
    Case("glm", "randhie", {"target": "mdvis", "family": "poisson"}),
    Case("glm", "star98", {"target": "NABOVE", "features": _STAR, "family": "poisson"}, 1),
]

_PCA = [
    Case("pca", "wine", {"columns": _WINE}),
    Case("pca", "wine", {"columns": _WINE, "standardize": True, "n_components": 5}),
    Case("pca", "iris", {"columns": _IRIS, "n_components": 2}),
    Case("pca", "breast_cancer", {"columns": _BC10, "standardize": True, "n_components": 4}),
    Case("pca", "diabetes", {"projections": True}),
]

# min_count = 1: with 7 unbalanced sites some hold a cluster of fewer than 5 rows, which they
# would withhold (see the kmeans docstring); the withholding is tested in test_kmeans.py.
_KMEANS = [
    Case("kmeans", "iris", {"columns": _IRIS, "k": 3, "tol": 0.0}, min_count=1),
    Case("kmeans", "iris", {"columns": _IRIS, "k": 5, "seed": 3}, min_count=1),
    Case("kmeans", "wine", {"columns": _WINE, "k": 3}, min_count=1),
    Case("kmeans", "breast_cancer", {"columns": _BC, "k": 4, "max_iter": 5}, min_count=1),
]

CASES = _GLM + _PCA + _KMEANS
