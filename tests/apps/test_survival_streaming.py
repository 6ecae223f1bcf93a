"""kaplan-meier and cox read a site's rows only through ``Table.batches`` (``streaming = True``):
a site table that refuses every other access, in batches of 7 rows, gives the same results as
one batch, in the clear and under secure aggregation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedflow.apps import get_app
from fedflow.apps.base import BATCH_ROWS, Table
from tests.apps.test_survival_secure import assert_matches, drive, split, survival_frame


class Streamed(Table):
    """A site table whose rows can only be read in batches of at most ``rows`` rows (as a
    source-backed table re-reading its files would), counting the batches handed out."""

    __slots__ = ("batch_rows", "read")

    def __init__(self, table: Table, rows: int) -> None:
        super().__init__({name: table[name] for name in table.columns})
        self.batch_rows = rows
        self.read = 0

    def __getitem__(self, name: str) -> np.ndarray:
        raise AssertionError(f"column '{name}' read whole, not batch by batch")

    def matrix(self, names: Sequence[str], *, intercept: bool = False) -> np.ndarray:
        raise AssertionError("matrix read whole, not batch by batch")

    def batches(
        self, names: Sequence[str] | None = None, rows: int = BATCH_ROWS
    ) -> Iterator[Table]:
        for batch in super().batches(names, min(rows, self.batch_rows)):
            self.read += 1
            yield batch


def _streamed(sites: dict[str, Table], rows: int) -> dict[str, Streamed]:
    return {name: Streamed(table, rows) for name, table in sites.items()}


RAWS = {
    "kaplan-meier": {"duration": "t", "event": "e", "group": "arm", "groups": ["a", "b", "c"]},
    "cox-efron": {"duration": "t", "event": "e", "features": ["x1", "x2", "x3"]},
    "cox-breslow": {"duration": "t", "event": "e", "features": ["x1", "x2"], "ties": "breslow"},
}


@pytest.mark.parametrize("secure", [False, True], ids=["clear", "secure"])
@pytest.mark.parametrize("case", list(RAWS))
def test_batches_of_seven_rows_give_the_one_batch_result(case: str, secure: bool) -> None:
    app = get_app("cox" if case.startswith("cox") else case)
    raw: dict[str, Any] = RAWS[case]
    frame = survival_frame(40)
    sites = split(frame, 3)
    whole = drive(app, raw, _streamed(sites, BATCH_ROWS), secure=secure)
    small = _streamed(sites, 7)
    batched = drive(app, raw, small, secure=secure)
    for table in small.values():
        assert table.read >= -(-table.n_rows // 7)  # every batch of every phase
    if app.name == "kaplan-meier":
        assert batched == whole  # counts: exactly equal
    else:
        assert batched["concordance"] == whole["concordance"]
        assert batched["iterations"] == whole["iterations"]
        assert_matches(app, batched, whole)
        assert_matches(app, batched, app.centralized(frame, app.parse_params(raw)))


def test_a_bad_value_in_a_later_batch_is_still_refused_by_name() -> None:
    frame = survival_frame(41)
    frame.loc[len(frame) - 1, "x2"] = np.nan
    sites = {"a": Streamed(Table.from_pandas(frame), 7)}
    with pytest.raises(Exception, match="column 'x2'"):
        drive(get_app("cox"), RAWS["cox-efron"], sites, secure=False)
    frame = survival_frame(42)
    frame.loc[len(frame) - 1, "t"] = -1.0
    sites = {"a": Streamed(Table.from_pandas(frame), 7)}
    with pytest.raises(Exception, match="negative durations"):
        drive(get_app("kaplan-meier"), RAWS["kaplan-meier"], sites, secure=False)


def test_every_phase_rereads_the_site_batch_by_batch_and_keeps_no_rows() -> None:
    """A Cox site keeps no rows between rounds: each phase (setup, every Newton evaluation, each
    concordance round) reads all its batches again, and its replies have the grid's size."""
    rng = np.random.default_rng(43)
    n = 5000
    frame = pd.DataFrame(
        {
            "t": rng.integers(1, 11, n).astype(float),
            "e": (rng.random(n) < 0.5).astype(np.int64),
            "x1": rng.normal(size=n),
        }
    )
    site = Streamed(Table.from_pandas(frame), 512)
    result = drive(get_app("cox"), {"duration": "t", "event": "e"}, {"a": site}, secure=False)
    assert result["n_obs"] == n
    assert site.read >= (1 + result["iterations"] + 1) * -(-n // 512)
