"""stats, t-test, crosstab and mean-app stream: a site reads its rows only through
``Table.batches`` and the result does not depend on the batch size (tiny batches of 7 rows give
what one batch gives, within the apps' tolerance; exactly for counts, quantiles and every result
under ``secure = true``, whose sums are exact)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps.base import Table
from tests.apps.descriptive_driver import drive


class Streamed(Table):
    """A site table an app may read only batch by batch, in batches of 7 rows by default."""

    __slots__ = ()
    served: list[int] = []  # rows per batch handed out (shared, reset by each test)

    def batches(self, names: Sequence[str] | None = None, rows: int = 7) -> Iterator[Table]:
        for batch in super().batches(names, rows):
            Streamed.served.append(batch.n_rows)
            yield batch

    def __getitem__(self, name: str) -> np.ndarray:
        raise AssertionError(f"column '{name}' read outside batches()")

    def matrix(self, names: Sequence[str], *, intercept: bool = False) -> np.ndarray:
        raise AssertionError("matrix() read outside batches()")

    def select(self, rows: np.ndarray) -> Table:
        raise AssertionError("select() read outside batches()")


def _frame(n: int = 240, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": 1e4 + rng.normal(0.0, 3.0, n),  # an offset: naive sums of squares lose digits
            "y": 10.0 * rng.beta(2.0, 3.0, n),  # skewed
            "g": rng.choice(["a", "b"], n),
            "h": rng.choice([1, 2, 3], n, p=[0.4, 0.35, 0.25]),
        }
    )


def _split(frame: pd.DataFrame, sizes: list[int], kind: type[Table]) -> dict[str, Table]:
    bounds = np.cumsum([0, *sizes])
    return {
        f"s{i}": kind(dict(Table.from_pandas(frame.iloc[a:b].reset_index(drop=True))._columns))
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    }


STATS = {
    "columns": ["x", "y"],
    "statistics": [
        "count",
        "mean",
        "variance",
        "std",
        "sum",
        "sem",
        "min",
        "max",
        "skew",
        "kurtosis",
        "covariance",
        "correlation",
    ],  # fmt: skip
    "quantiles": [0.1, 0.5, 0.9],
    "bin_edges": {"y": [0.0, 2.0, 4.0, 100.0]},
    "share_extremes": True,
}
MEAN_APP = "fedflow.apps.fc_mean:FeatureCloudMean"
CASES: list[tuple[str, dict[str, Any]]] = [
    ("stats", STATS),
    ("stats", {**STATS, "bins": 2, "bin_edges": None}),
    ("t-test", {"column": "x", "group": "g"}),
    ("crosstab", {"row": "g", "column": "h"}),
    ("crosstab", {"row": "g", "column": "h", "row_levels": ["a", "b"], "column_levels": [3, 2, 1]}),
    (MEAN_APP, {}),
]


def _close(a: Any, b: Any, rel: float, path: str = "") -> None:
    """Assert two results equal: integers, strings and lists exactly, floats within ``rel``."""
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _close(a[key], b[key], rel, f"{path}.{key}")
    elif isinstance(a, float) and not isinstance(b, int):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert b == pytest.approx(a, rel=rel, abs=1e-12), path
    else:
        assert a == b, path


def _data(app: str) -> pd.DataFrame:
    frame = _frame()
    return frame[["x", "y"]] if app == MEAN_APP else frame


RUNS = [
    (app, params if not secure or app != "t-test" else {**params, "groups": ["a", "b"]}, secure)
    for secure in (False, True)
    for app, params in CASES
    if not (secure and app == "crosstab" and "row_levels" not in params)  # levels needed
]


@pytest.mark.parametrize(
    ("app", "params", "secure"),
    RUNS,
    ids=[
        f"{a.split(':')[-1]}-{i}-{'secure' if s else 'plain'}" for i, (a, _, s) in enumerate(RUNS)
    ],
)
def test_tiny_batches_give_what_one_batch_gives(
    app: str, params: dict[str, Any], secure: bool
) -> None:
    frame = _data(app)
    Streamed.served = []
    tiny = drive(app, params, _split(frame, [100, 65, 75], Streamed), secure=secure)
    assert Streamed.served and max(Streamed.served) == 7  # the apps did read in batches of 7
    whole = drive(app, params, _split(frame, [100, 65, 75], Table), secure=secure)
    if secure:
        assert tiny.result == whole.result  # exact sums: the batching cannot change a bit
    else:
        _close(whole.result, tiny.result, rel=1e-9)
    if app != MEAN_APP:  # and both agree with the twin on the pooled rows
        reference = get_app(app)
        twin = reference.centralized(
            frame, reference.resolve(reference.parse_params(params), {"x": "float", "y": "float"})
        )
        _close(twin, tiny.result, rel=1e-9)
    else:
        assert tiny.result["pooled_mean"] == pytest.approx(frame.to_numpy().mean(), rel=1e-14)


def test_the_streamed_double_refuses_reads_outside_batches() -> None:
    table = _split(_frame(), [150], Streamed)["s0"]
    with pytest.raises(AssertionError, match="outside batches"):
        table["x"]
    assert [b.n_rows for b in table.batches(["x"])] == [7] * 21 + [3]


def test_apps_declare_streaming() -> None:
    for name in ("stats", "t-test", "crosstab", MEAN_APP):
        assert get_app(name).streaming is True, name


def test_a_missing_value_in_a_late_batch_is_refused() -> None:
    frame = _frame()
    frame.loc[140, "y"] = np.nan
    sites = _split(frame, [150], Streamed)
    with pytest.raises(Exception, match="column 'y' has missing values"):
        drive("stats", {"columns": ["x", "y"]}, sites, secure=False)


# --- the site's real streamed table: Parquet files re-read batch by batch -------------------------
@pytest.mark.slow  # 12 runs over 90,000 rows, quantile rounds re-reading the files
def test_the_apps_run_on_streamed_parquet_sites_as_on_tables_in_memory(tmp_path: Any) -> None:
    """Each site's rows come from a Parquet file through ``prepare_streamed`` (memory_limit 0:
    nothing cached, every pass re-reads the file, whole-column access refused); a site of 70,000
    rows streams in two batches. The results equal those over the same rows held in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fedflow.node.data import StreamedTable, open_files, prepare_streamed

    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {
            "x": 1e3 + rng.normal(0.0, 5.0, 90_000),
            "y": rng.gamma(3.0, 1.0, 90_000),
            "g": rng.choice(["a", "b"], 90_000),
            "h": rng.integers(1, 4, 90_000),
        }
    )
    parts = {"big": frame.iloc[:70_000], "small": frame.iloc[70_000:]}
    needed = {"x": "numeric", "y": "numeric", "g": "any", "h": "any"}
    streamed: dict[str, Table] = {}
    for name, part in parts.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(
            pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False), path
        )
        streamed[name] = prepare_streamed(
            open_files([path]), needed, dropna=False, min_count=5, memory_limit=0
        )
        assert isinstance(streamed[name], StreamedTable)
    in_memory = {n: Table.from_pandas(p.reset_index(drop=True)) for n, p in parts.items()}
    assert [b.n_rows for b in streamed["big"].batches(["x"])] == [65_536, 4_464]
    stats = {**STATS, "bin_edges": {"y": [0.0, 2.0, 4.0, 100.0]}}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("stats", stats),
        ("t-test", {"column": "x", "group": "g", "groups": ["a", "b"]}),
        (
            "crosstab",
            {"row": "g", "column": "h", "row_levels": ["a", "b"], "column_levels": [1, 2, 3]},
        ),
    ]
    for app, params in cases:
        for secure in (False, True):
            got = drive(app, params, streamed, secure=secure)
            expected = drive(app, params, in_memory, secure=secure)
            if secure:
                assert got.result == expected.result, app
            else:
                _close(expected.result, got.result, rel=1e-12)
