"""``fedflow split``: reproducible per-site files in each mode, refusal under min_count, and a
skeleton that runs once an app is set."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedflow.errors import StudyError
from fedflow.study.split import split_file
from tests.helpers import fedflow


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / "cohort.csv"
    lines = ["x,y,centre,label"]
    for i in range(103):
        lines.append(f"{rng.normal():.6f},{rng.normal():.6f},c{i % 7},{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))[1:]


def test_same_seed_same_bytes_other_seed_other_split(data: Path, tmp_path: Path) -> None:
    a = split_file(data, tmp_path / "a", sites=4, seed=11)
    b = split_file(data, tmp_path / "b", sites=4, seed=11)
    c = split_file(data, tmp_path / "c", sites=4, seed=12)
    assert [f.read_bytes() for f in a.files] == [f.read_bytes() for f in b.files]
    assert a.study.read_text() == b.study.read_text()
    assert [f.read_bytes() for f in a.files] != [f.read_bytes() for f in c.files]


def test_iid_sizes_differ_by_at_most_one_and_keep_every_row(data: Path, tmp_path: Path) -> None:
    done = split_file(data, tmp_path / "o", sites=4, seed=1)
    assert sorted(done.rows) == [25, 26, 26, 26]
    everything = sorted(tuple(r) for f in done.files for r in _rows(f))
    assert everything == sorted(tuple(r) for r in _rows(data))


def test_sizes_ratio(data: Path, tmp_path: Path) -> None:
    done = split_file(data, tmp_path / "o", sites=3, seed=1, sizes=[2, 6, 12])
    assert sum(done.rows) == 103
    for rows, share in zip(done.rows, [2 / 20, 6 / 20, 12 / 20], strict=True):
        assert abs(rows - 103 * share) < 1


def test_by_puts_each_value_at_one_site(data: Path, tmp_path: Path) -> None:
    done = split_file(data, tmp_path / "o", sites=3, seed=1, mode="by", column="centre")
    seen: dict[str, int] = {}
    for site, f in enumerate(done.files):
        for row in _rows(f):
            assert seen.setdefault(row[2], site) == site
    assert len(seen) == 7


def test_dirichlet_gives_the_documented_label_proportions(data: Path, tmp_path: Path) -> None:
    done = split_file(
        data,
        tmp_path / "o",
        sites=3,
        seed=5,
        mode="dirichlet",
        column="label",
        alpha=0.8,
        min_count=1,
    )
    labels = [r[3] for r in _rows(data)]
    rng = np.random.default_rng(5)  # the algorithm of the module docstring, independently
    expected = np.zeros((3, 3), int)
    for k, value in enumerate(sorted(set(labels))):
        n = labels.count(value)
        rng.permutation(n)
        p = rng.dirichlet([0.8] * 3)
        cuts = np.floor(np.cumsum(p)[:-1] * n).astype(int)
        expected[:, k] = np.diff(np.concatenate([[0], cuts, [n]]))
    got = np.array([[sum(r[3] == v for r in _rows(f)) for v in "012"] for f in done.files])
    np.testing.assert_array_equal(got, expected)


def test_refuses_a_site_under_min_count(data: Path, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="under min_count = 5 rows"):
        split_file(data, tmp_path / "o", sites=3, seed=1, sizes=[1, 50, 50])
    assert not (tmp_path / "o").exists()
    done = fedflow("split", str(data), "--sites", "30", "--seed", "1", "--out", str(tmp_path / "p"))
    assert done.returncode == 2 and "min_count" in done.stderr


def test_parquet_in_parquet_out(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": np.arange(40.0), "g": [f"v{i % 4}" for i in range(40)]}), path)
    done = split_file(path, tmp_path / "o", sites=2, seed=3, mode="by", column="g")
    assert [f.suffix for f in done.files] == [".parquet", ".parquet"]
    assert sum(pq.read_table(f).num_rows for f in done.files) == 40


def test_the_skeleton_runs_once_an_app_is_set(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    done = fedflow("split", str(data), "--sites", "3", "--seed", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    study = out / "study.toml"
    text = study.read_text()
    assert text.count("[[clients]]") == 3 and '# app = "' in text
    study.write_text(text.replace('# app = "stats"', 'app = "stats"'))
    run = fedflow("run", str(study), "--quiet")
    assert run.returncode == 0, run.stderr
