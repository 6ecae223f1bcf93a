"""Site data loading: formats, concatenation, types, and one-line errors naming file and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedflow.errors import DataError
from fedflow.node.data import prepare_table, read_table


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_tsv_and_parquet_concatenate(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    a = write(tmp_path / "a.csv", "x,y,g\n1,2.5,a\n2,3.5,b\n")
    b = write(tmp_path / "b.tsv", "x\ty\tg\n3\t4.5\tc\n")
    c = tmp_path / "c.parquet"
    pd.DataFrame({"x": [4], "y": [5.5], "g": ["d"]}).to_parquet(c)
    loaded = read_table([a, b, c], site="s")
    table = loaded.table
    assert table.columns == ["x", "y", "g"]
    assert table["x"].dtype == np.int64 and list(table["x"]) == [1, 2, 3, 4]
    assert table["y"].dtype == np.float64 and list(table["y"]) == [2.5, 3.5, 4.5, 5.5]
    assert list(table["g"]) == ["a", "b", "c", "d"]
    assert [f.rows for f in loaded.files] == [2, 1, 1]
    assert len(loaded.files[0].sha256) == 64
    assert list(loaded.row_file) == [0, 0, 1, 2]


def test_missing_values_name_file_and_column(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "x,y\n1,2\n2,3\n3,4\n")
    b = write(tmp_path / "b.csv", "x,y\n4,NA\n5,6\n6,\n")
    loaded = read_table([a, b], site="s")
    with pytest.raises(DataError, match=r"b\.csv: column 'y' has 2 missing value\(s\)") as info:
        prepare_table(loaded, {"y": "numeric"}, dropna=False, min_count=1)
    assert info.value.file == "b.csv" and info.value.column == "y"
    table = prepare_table(loaded, {"x": "numeric", "y": "numeric"}, dropna=True, min_count=1)
    assert list(table["x"]) == [1, 2, 3, 5]
    # a column not needed may have missing values
    assert prepare_table(loaded, {"x": "numeric"}, dropna=False, min_count=1).n_rows == 6


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "a.csv is empty"),
        ("x,y\n", "header but no rows"),
        ("x,y\n1,2,3\n", "line 2 has 3 fields"),
        ("x,x\n1,2\n", "duplicate column names: x"),
    ],
)
def test_broken_files(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "a.csv", content)
    with pytest.raises(DataError, match=message) as info:
        read_table([path], site="berlin")
    assert str(info.value).startswith("site 'berlin': ")


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_table([tmp_path / "nope.csv"], site="s")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        read_table([tmp_path / "a.xlsx"], site="s")
    with pytest.raises(DataError, match="no data files"):
        read_table([], site="s")


def test_files_with_different_columns_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "x,y\n1,2\n")
    b = write(tmp_path / "b.csv", "x,z\n1,2\n")
    with pytest.raises(DataError, match="b.csv: columns differ from a.csv"):
        read_table([a, b])


def test_column_checks(tmp_path: Path) -> None:
    loaded = read_table([write(tmp_path / "a.csv", "x,g,t\n1,a,0\n2,b,1\n3,c,2\n")])
    with pytest.raises(DataError, match="column 'q' is missing in a.csv"):
        prepare_table(loaded, {"q": "numeric"}, dropna=False, min_count=1)
    with pytest.raises(DataError, match="column 'g' is not numeric in a.csv \\(e.g. value 'a'\\)"):
        prepare_table(loaded, {"g": "numeric"}, dropna=False, min_count=1)
    with pytest.raises(DataError, match="column 't' must hold only 0 and 1"):
        prepare_table(loaded, {"t": "binary"}, dropna=False, min_count=1)
    with pytest.raises(DataError, match="3 usable row\\(s\\) in a.csv, fewer than min_count = 5"):
        prepare_table(loaded, {"x": "numeric"}, dropna=False, min_count=5)
    assert prepare_table(loaded, {"g": "any"}, dropna=False, min_count=3).n_rows == 3


def test_parquet_columns_keep_their_types_and_missing_values(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    a = tmp_path / "a.parquet"
    pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int64"),
            "f": [0.5, float("nan"), 2.0],
            "b": [True, False, True],
        }
    ).to_parquet(a)
    b = tmp_path / "b.parquet"
    pd.DataFrame(
        {"n": pd.array([4, 5], dtype="Int64"), "f": [1.0, 3.0], "b": [False, False]}
    ).to_parquet(b)
    loaded = read_table([a, b])
    table = loaded.table
    assert [f.rows for f in loaded.files] == [3, 2]
    assert table["b"].dtype == np.int64 and list(table["b"]) == [1, 0, 1, 0, 0]
    assert table["n"].dtype == np.float64 and list(loaded.missing["n"]) == [
        False,
        True,
        False,
        False,
        False,
    ]
    assert list(loaded.missing["f"]) == [False, True, False, False, False]
    clean = read_table([b]).table
    assert clean["n"].dtype == np.int64 and list(clean["n"]) == [4, 5]
    mixed = read_table([b, write(tmp_path / "c.csv", "n,f,b\n6,x,1\n")]).table
    assert list(mixed["n"]) == [4, 5, 6] and list(mixed["f"]) == ["1.0", "3.0", "x"]


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e999"])
def test_non_finite_values_name_file_column_and_row(tmp_path: Path, cell: str) -> None:
    a = write(tmp_path / "a.csv", "x,y\n1,2\n2,3\n")
    b = write(tmp_path / "b.csv", f"x,y\n3,4\n4,5\n5,{cell}\n6,7\n")
    loaded = read_table([a, b], site="s")
    with pytest.raises(
        DataError, match=r"b\.csv: column 'y' holds the non-finite value .*inf in row 3"
    ) as info:
        prepare_table(loaded, {"y": "numeric"}, dropna=False, min_count=1)
    assert info.value.file == "b.csv" and info.value.column == "y"
    assert info.value.exit_code == 2
    # a column the app does not need may hold anything
    assert prepare_table(loaded, {"x": "numeric"}, dropna=False, min_count=1).n_rows == 6


def test_non_finite_value_after_dropped_rows_keeps_its_row(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "x,y\nNA,1\n2,2\n3,inf\n")
    loaded = read_table([a], site="s")
    with pytest.raises(DataError, match=r"a\.csv: column 'y' .* in row 3"):
        prepare_table(loaded, {"x": "numeric", "y": "numeric"}, dropna=True, min_count=1)


def test_semicolon_files_suggest_sep(tmp_path: Path) -> None:
    # decimal commas: the comma splits every line into a different number of fields
    path = write(tmp_path / "a.csv", "age;bmi;sex\n41;22,5;m\n52;31,0;f\n")
    with pytest.raises(DataError, match=r"line 2 has 2 fields, the header has 1") as info:
        read_table([path], site="s")
    assert "the header is one field holding ';'" in str(info.value)
    assert 'set sep = ";" for this client' in str(info.value)
    # without commas the file reads as one column; the missing column then names the cause
    path = write(tmp_path / "b.csv", "age;bmi\n41;22\n52;31\n")
    loaded = read_table([path], site="s")
    with pytest.raises(DataError, match=r"column 'age' is missing.*set sep = \";\""):
        prepare_table(loaded, {"age": "numeric"}, dropna=False, min_count=1)
    table = read_table([path], site="s", sep=";").table
    assert table.columns == ["age", "bmi"] and list(table["bmi"]) == [22, 31]


def test_headerless_files_suggest_header_false(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "41,22.5,1\n52,31.0,0\n60,27.1,1\n")
    loaded = read_table([path], site="s")
    with pytest.raises(DataError, match=r"column 'age' is missing") as info:
        prepare_table(loaded, {"age": "numeric"}, dropna=False, min_count=1)
    assert "column name '41' is a number" in str(info.value)
    assert "set header = false and columns = [...]" in str(info.value)
    loaded = read_table([path], site="s", header=False, columns=["age", "bmi", "y"])
    assert loaded.table.columns == ["age", "bmi", "y"] and list(loaded.table["age"]) == [41, 52, 60]
    assert loaded.files[0].rows == 3
    tsv = write(tmp_path / "b.tsv", "1;2\n3;4\n")
    table = read_table([tsv], sep=";", header=False, columns=["x", "y"]).table
    assert list(table["y"]) == [2, 4]


def test_headerless_files_check_the_number_of_names(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "1,2,3\n")
    with pytest.raises(DataError, match=r"line 1 has 3 fields, columns = \[...\] names 2"):
        read_table([path], header=False, columns=["x", "y"])
    with pytest.raises(DataError, match=r"header = false needs the column names"):
        read_table([path], header=False)
