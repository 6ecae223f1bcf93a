"""Fidelity cases of the analytics apps: stats (histograms, quantiles, matrices), crosstab, t-test.

Cases run with the default min_count = 5 wherever the dataset is large enough for every site's
cells to pass it on all four splits; the few with ``min_count=1`` check the arithmetic on sparse
tables or tail bins that a site would (rightly) refuse to reveal under the default.
"""

from tests.apps.fidelity import Case

_BC = ["mean_radius", "mean_area", "worst_texture"]

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
    ),
    Case(
        "stats",
        "randhie",
        {"columns": ["mdvis", "lpi"], "quantiles": [0.05, 0.95], "quantile_method": "inverted_cdf"},
        min_count=1,
    ),
    # stats: histograms over given edges, and over edges agreed from the federated range
    Case(
        "stats",
        "fair",
        {"bin_edges": [0, 2.5, 4.5, 6], "columns": ["rate_marriage", "religious", "children"]},
    ),
    Case("stats", "fair", {"bin_edges": {"yrs_married": [0, 5, 10, 25], "age": [15, 25, 30, 45]}}),
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
    Case("crosstab", "randhie", {"row": "lncoins", "column": "idp"}),
    Case("crosstab", "randhie", {"row": "hlthg", "column": "idp"}),
    Case("crosstab", "gbsg2", {"row": "horTh", "column": "cens"}),
    Case("crosstab", "gbsg2", {"row": "menostat", "column": "cens"}),
    Case("crosstab", "rossi", {"row": "prio", "column": "wexp"}, min_count=1),
    Case("crosstab", "fair", {"row": "children", "column": "rate_marriage"}, min_count=1),
    # t-test: default groups (two levels), given groups, text labels
    Case("t-test", "randhie", {"column": "lpi", "group": "hlthg"}),
    Case("t-test", "randhie", {"column": "mdvis", "group": "idp", "groups": [1, 0]}),
    Case("t-test", "gbsg2", {"column": "tsize", "group": "horTh"}),
    Case("t-test", "fair", {"column": "affairs", "group": "educ", "groups": [12, 16]}),
    Case("t-test", "breast_cancer", {"column": "mean_radius", "group": "target"}),
    Case("t-test", "rossi", {"column": "age", "group": "fin"}),
]
