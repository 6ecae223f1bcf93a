"""Per-client ``sep``, ``header`` and ``columns``: schema, wire, the site's loader, validate, pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedflow.errors import DataError, StudyError
from fedflow.study import load_study
from fedflow.validate import validate_study
from fedflow.wire import MessageCodec, Setup

STUDY = """
app = "stats"
min_count = 1
[params]
columns = ["age", "bmi"]

[[clients]]
name = "berlin"
data = ["berlin.csv"]
sep = ";"

[[clients]]
name = "vienna"
data = ["vienna.csv"]
header = false
columns = ["age", "bmi"]
"""


def write_sites(tmp_path: Path, study: str = STUDY) -> Path:
    (tmp_path / "berlin.csv").write_text("age;bmi\n41;22.5\n52;31.0\n")
    (tmp_path / "vienna.csv").write_text("60,27.1\n33,24.0\n")
    path = tmp_path / "study.toml"
    path.write_text(study)
    return path


def test_clients_take_sep_header_and_columns(tmp_path: Path) -> None:
    study = load_study(write_sites(tmp_path))
    berlin, vienna = study.clients
    assert berlin.reading() == {"sep": ";", "header": True, "columns": None}
    assert vienna.reading() == {"sep": None, "header": False, "columns": ["age", "bmi"]}


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ("header = false", "clients[1]: header = false needs columns = [...]"),
        (
            'columns = ["a"]',
            "clients[1]: columns = [...] names the columns of files without a header",
        ),
        ('sep = ";;"', "clients[1].sep: must be one character"),
        ('header = "no"', "clients[1].header: input should be a valid boolean"),
        ('header = false\ncolumns = ["a", "a"]', "duplicate names in columns: a"),
    ],
)
def test_reading_keys_are_checked(tmp_path: Path, client: str, message: str) -> None:
    path = tmp_path / "study.toml"
    path.write_text(f'app = "stats"\n[[clients]]\ndata = ["a.csv"]\n{client}\n')
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study(path)


def test_validate_reads_each_site_as_its_client_says(tmp_path: Path) -> None:
    report = validate_study(write_sites(tmp_path))
    assert report.lines[0].startswith("berlin: 2 usable rows")
    assert report.lines[1].startswith("vienna: 2 usable rows")


def test_validate_suggests_sep_and_header(tmp_path: Path) -> None:
    bare = STUDY.replace('sep = ";"\n', "").replace(
        'header = false\ncolumns = ["age", "bmi"]\n', ""
    )
    with pytest.raises(DataError, match=r'set sep = ";" for this client'):
        validate_study(write_sites(tmp_path, bare))
    (tmp_path / "berlin.csv").write_text("age,bmi\n41,22.5\n52,31.0\n")
    with pytest.raises(DataError, match=r"column name '60' is a number.*set header = false"):
        validate_study(tmp_path / "study.toml")


def test_setup_carries_the_reading_keys() -> None:
    codec = MessageCodec()
    plain = codec.decode(codec.encode(Setup(data=["a.csv"])))
    assert isinstance(plain, Setup) and plain.sep is None and plain.header and plain.columns is None
    setup = Setup(data=["a.csv"], sep=";", header=False, columns=["x", "y"])
    assert codec.decode(codec.encode(setup)) == setup


def test_pooled_reference_reads_files_as_the_sites_do(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    from fedflow.results.pool import pooled_frame

    study = load_study(write_sites(tmp_path))
    pooled = pooled_frame(
        {c.name: c.data for c in study.clients},
        ["age", "bmi"],
        dropna=False,
        reading={c.name: c.reading() for c in study.clients},
    )
    assert list(pooled["age"]) == [41, 52, 60, 33]
