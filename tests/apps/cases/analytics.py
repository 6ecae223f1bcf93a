"""Fidelity cases of the analytics apps: stats (histograms, quantiles, matrices), crosstab, t-test.

Cases run with the default min_count = 5 wherever the dataset is large enough for every site's
cells to pass it on all four splits; the few with ``min_count=1`` check the arithmetic on sparse
tables or tail bins that a site would (rightly) refuse to reveal under the default.
"""

from fedflow.results.compare import Tolerance
from tests.apps.fidelity import EXACT, Case

_BC = ["mean_radius", "mean_area", "worst_texture"]

SAME = Tolerance(0.0, 0.0)
"""Integers (counts, degrees of freedom) and order statistics: identical on both sides."""


def _stats(columns: list[str], *, order_statistics: bool = False) -> dict[str, Tolerance]:
    """stats: every value to rounding (largest relative difference measured on these cases:
    5.4e-14); counts and histogram counts identical; quantiles identical when the method picks
    an order statistic (the bisection finds it bit for bit)."""
    rules = {"": EXACT}
    for column in columns:
        rules[f"{column}.count"] = SAME
        rules[f"{column}.histogram.counts"] = SAME
        if order_statistics:
            rules[f"{column}.quantiles"] = SAME
    return rules


# crosstab: the table, n and dof identical; chi2 and p value to rounding (measured: 0)
_CROSSTAB = {"": EXACT, "table": SAME, "n": SAME, "dof": SAME}


def _ttest(groups: list[str]) -> dict[str, Tolerance]:
    """t-test: every value to rounding (measured: 4.0e-14), the group counts identical."""
    return {"": EXACT, **{f"groups.{g}.count": SAME for g in groups}}


CASES = [
    # stats: exact quantiles by federated bisection, numpy's default (linear) and other methods
    Case("stats", "randhie", {"quantiles": [0.25, 0.5, 0.75]}),
    Case(
        "stats",
        "fair",
        {
            "quantiles": [0.1, 0.5, 0.9],
            "quantile_method": "median_unbiased",
            "statistics": ["count", "mean", "variance", "std", "correlation"],
        },
    ),
    Case(
        "stats",
        "breast_cancer",
        {
            "columns": _BC,
            "quantiles": [0.5],
            "quantile_method": "lower",
            "statistics": ["count", "mean", "sum", "sem", "covariance", "correlation"],
        },
        tolerances=_stats(_BC, order_statistics=True),
    ),
    Case(
        "stats",
        "randhie",
        {"columns": ["mdvis", "lpi"], "quantiles": [0.05, 0.95], "quantile_method": "inverted_cdf"},
        min_count=1,
        tolerances=_stats(["mdvis", "lpi"], order_statistics=True),
    ),
    # stats: histograms over given edges, and over edges agreed from the federated range
    Case(
        "stats",
        "fair",
        {"bin_edges": [0, 2.5, 4.5, 6], "columns": ["rate_marriage", "religious", "children"]},
        tolerances=_stats(["rate_marriage", "religious", "children"]),
    ),
    Case(
        "stats",
        "fair",
        {"bin_edges": {"yrs_married": [0, 5, 10, 25], "age": [15, 25, 30, 45]}},
        tolerances=_stats(["yrs_married", "age"]),
    ),
    Case(
        "stats",
        "wine",
        {
            "bins": 4,
            "share_extremes": True,
            "quantiles": [0, 0.5, 1],
            "statistics": ["min", "max", "covariance"],
        },
        min_count=1,
    ),
    # crosstab: numeric and text categories
    Case("crosstab", "randhie", {"row": "lncoins", "column": "idp"}, tolerances=_CROSSTAB),
    Case("crosstab", "randhie", {"row": "hlthg", "column": "idp"}, tolerances=_CROSSTAB),
    Case("crosstab", "gbsg2", {"row": "horTh", "column": "cens"}, tolerances=_CROSSTAB),
    Case("crosstab", "gbsg2", {"row": "menostat", "column": "cens"}, tolerances=_CROSSTAB),
    Case("crosstab", "rossi", {"row": "prio", "column": "wexp"}, min_count=1, tolerances=_CROSSTAB),
    Case(
        "crosstab",
        "fair",
        {"row": "children", "column": "rate_marriage"},
        min_count=1,
        tolerances=_CROSSTAB,
    ),
    # t-test: default groups (two levels), given groups, text labels
    Case("t-test", "randhie", {"column": "lpi", "group": "hlthg"}, tolerances=_ttest(["0", "1"])),
    Case(
        "t-test",
        "randhie",
        {"column": "mdvis", "group": "idp", "groups": [1, 0]},
        tolerances=_ttest(["1", "0"]),
    ),
    Case(
        "t-test", "gbsg2", {"column": "tsize", "group": "horTh"}, tolerances=_ttest(["no", "yes"])
    ),
    Case(
        "t-test",
        "fair",
        {"column": "affairs", "group": "educ", "groups": [12, 16]},
        tolerances=_ttest(["12", "16"]),
    ),
    Case(
        "t-test",
        "breast_cancer",
        {"column": "mean_radius", "group": "target"},
        tolerances=_ttest(["0", "1"]),
    ),
    Case("t-test", "rossi", {"column": "age", "group": "fin"}, tolerances=_ttest(["0", "1"])),
]
