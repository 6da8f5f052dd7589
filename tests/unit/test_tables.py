"""CSV tables: reading files (and refusing bad ones clearly), and the coordinator's Dataset made from a CSV.

Files are written into tmp_path; breast-cancer-like numbers are made up, the loaders' rules are what is tested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.learning.datasets import DatasetError, DatasetNotFoundError, load_dataset
from federation.learning.own_data import TableOptions, examples_for_schema, load_own_dataset
from federation.learning.tables import (
    DataMismatchError, TableError, class_indices, class_names_of, numeric_columns, read_csv_table,
)
from federation.protocol.data_schema import DataSchema


def _write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _table_text(rows: int = 20, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = ["height,weight,colour,kind"]
    for i in range(rows):
        kind = "cat" if i % 2 else "dog"
        lines.append(f"{rng.normal(30, 5):.3f},{rng.normal(10, 2):.3f},{'red' if i % 3 else 'blue'},{kind}")
    return "\n".join(lines) + "\n"


# ---- reading -------------------------------------------------------------------------------------------


def test_a_table_is_read_with_its_header_rows_and_line_numbers(tmp_path: Path) -> None:
    table = read_csv_table(_write(tmp_path, "a,b,label\n1,2,x\n\n3,4,y\n"))
    assert table.columns == ("a", "b", "label")
    assert table.num_rows == 2
    assert list(table.line_numbers) == [2, 4]  # the blank line is skipped, line numbers stay the file's
    assert numeric_columns(table, ["b", "a"]).tolist() == [[2.0, 1.0], [4.0, 3.0]]


def test_semicolons_and_tabs_are_delimiters_too(tmp_path: Path) -> None:
    assert read_csv_table(_write(tmp_path, "a;b\n1;2\n")).columns == ("a", "b")
    assert read_csv_table(_write(tmp_path, "a\tb\n1\t2\n", "t.tsv")).columns == ("a", "b")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="is empty: it needs a header row"):
        read_csv_table(_write(tmp_path, ""))
    with pytest.raises(TableError, match="is empty"):
        read_csv_table(_write(tmp_path, "\n  \n"))


def test_a_header_without_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="has a header .* but no rows of data"):
        read_csv_table(_write(tmp_path, "a,b\n"))


def test_a_ragged_row_is_refused_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"line 3: 2 fields, but the header has 3 columns .*ragged"):
        read_csv_table(_write(tmp_path, "a,b,c\n1,2,3\n4,5\n"))


def test_a_missing_or_repeated_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="first row is all numbers"):
        read_csv_table(_write(tmp_path, "1,2\n3,4\n"))
    with pytest.raises(TableError, match="column names repeat .*'a'"):
        read_csv_table(_write(tmp_path, "a,a\n1,2\n"))
    with pytest.raises(TableError, match="empty column name"):
        read_csv_table(_write(tmp_path, "a,,c\n1,2,3\n"))


def test_a_missing_file_and_non_utf8_text_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        read_csv_table(tmp_path / "nope.csv")
    path = tmp_path / "latin.csv"
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(TableError, match="UTF-8"):
        read_csv_table(path)


def test_text_in_a_numeric_column_names_line_column_and_value(tmp_path: Path) -> None:
    table = read_csv_table(_write(tmp_path, "a,b\n1,2\n3,abc\n"))
    with pytest.raises(TableError, match=r"line 3, column 'b': 'abc' is not a number"):
        numeric_columns(table, ["a", "b"])


@pytest.mark.parametrize("cell, what", [("", "an empty cell is not a number"), ("nan", "'nan' is not a finite"),
                                        ("inf", "'inf' is not a finite"), ("1e300", "'1e300' is not a finite")])
def test_empty_nan_and_infinite_cells_are_refused(tmp_path: Path, cell: str, what: str) -> None:
    table = read_csv_table(_write(tmp_path, f"a,b\n1,2\n{cell},4\n"))
    with pytest.raises(TableError, match=f"line 3, column 'a': {what}"):
        numeric_columns(table, ["a"])


def test_class_names_sort_numbers_numerically_and_text_by_text() -> None:
    assert class_names_of(np.array(["10", "2", "1", "2"])) == ("1", "2", "10")
    assert class_names_of(np.array(["dog", "cat", "dog"])) == ("cat", "dog")


def test_labels_map_through_the_coordinators_class_names(tmp_path: Path) -> None:
    table = read_csv_table(_write(tmp_path, "x,label\n1,dog\n2,cat\n3,dog\n"))
    assert class_indices(table, "label", ("bird", "cat", "dog")).tolist() == [2, 1, 2]
    numbers = read_csv_table(_write(tmp_path, "x,label\n1,1.0\n2,0\n", "n.csv"))
    assert class_indices(numbers, "label", ("0", "1")).tolist() == [1, 0]  # "1.0" is the class "1"


def test_a_label_the_coordinator_does_not_know_is_refused(tmp_path: Path) -> None:
    table = read_csv_table(_write(tmp_path, "x,label\n1,dog\n2,horse\n"))
    with pytest.raises(DataMismatchError, match=r"line 3, column 'label': label 'horse' is not one of the "
                                                r"coordinator's 2 classes \('cat', 'dog'\)"):
        class_indices(table, "label", ("cat", "dog"))


# ---- the coordinator's Dataset --------------------------------------------------------------------------


def test_the_coordinator_splits_scales_and_describes_its_table(tmp_path: Path) -> None:
    path = _write(tmp_path, _table_text(50))
    options = TableOptions(label="kind", features=("weight", "height"), scaling="standard", test_fraction=0.2)
    data = load_dataset(str(path), table=options)
    assert data.class_names == ("cat", "dog")
    assert data.x_train.shape == (40, 2) and data.x_test.shape == (10, 2) and data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.task == "classification"
    schema = data.schema
    assert schema is not None and schema.features == ("weight", "height") and schema.label == "kind"
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-5) and np.allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    again = load_dataset(str(path), table=options)
    assert np.array_equal(again.x_test, data.x_test)  # the seeded split is the same every time
    other = load_dataset(str(path), table=TableOptions(label="kind", features=("weight", "height"), seed=1))
    assert not np.array_equal(other.y_test, data.y_test) or not np.array_equal(other.x_test, data.x_test)


def test_features_default_to_every_other_column_and_text_features_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _table_text(20))
    with pytest.raises(TableError, match="column 'colour': 'blue' is not a number"):
        load_own_dataset(path, TableOptions(label="kind"))
    path2 = _write(tmp_path, "a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(10)), "two.csv")
    data = load_own_dataset(path2, TableOptions())  # the label is the last column
    assert data.schema is not None and data.schema.features == ("a", "b") and data.class_names == ("0", "1")


def test_a_missing_label_or_feature_column_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, _table_text(20))
    with pytest.raises(TableError, match="no label column 'species' .*'height', 'weight', 'colour', 'kind'"):
        load_own_dataset(path, TableOptions(label="species"))
    with pytest.raises(TableError, match="no column 'age'"):
        load_own_dataset(path, TableOptions(label="kind", features=("height", "age")))


def test_a_separate_test_file_may_order_its_columns_differently(tmp_path: Path) -> None:
    train = _write(tmp_path, "a,b,y\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(10)))
    test = _write(tmp_path, "y,extra,b,a\n1,zz,-5,5\n0,zz,-6,6\n", "test.csv")
    data = load_own_dataset(train, TableOptions(test_file=str(test)))
    assert data.x_test.tolist() == [[5.0, -5.0], [6.0, -6.0]] and data.y_test.tolist() == [1, 0]
    assert len(data.y_train) == 10


def test_one_class_or_no_test_rows_are_refused(tmp_path: Path) -> None:
    one = _write(tmp_path, "a,y\n1,x\n2,x\n3,x\n")
    with pytest.raises(TableError, match="holds one class only"):
        load_own_dataset(one, TableOptions())
    small = _write(tmp_path, "a,y\n1,x\n2,z\n", "small.csv")
    with pytest.raises(TableError, match="test_fraction"):
        load_own_dataset(small, TableOptions(test_fraction=0.1))


def test_regression_targets_are_float_and_have_no_class_names(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,price\n" + "".join(f"{i},{i % 3},{i * 1.5}\n" for i in range(20)))
    data = load_own_dataset(path, TableOptions(), task="regression")
    assert data.task == "regression" and data.class_names == () and data.y_train.dtype == np.float32
    text = _write(tmp_path, "a,price\n1,cheap\n2,dear\n3,cheap\n4,dear\n5,cheap\n", "text.csv")
    with pytest.raises(TableError, match="column 'price': 'cheap' is not a number"):
        load_own_dataset(text, TableOptions(), task="regression")


def test_a_device_file_with_extra_columns_and_another_order_gets_the_same_examples(tmp_path: Path) -> None:
    schema = DataSchema("table", ("height", "weight"), "kind", mean=(30.0, 10.0), std=(5.0, 2.0))
    mine = read_csv_table(_write(tmp_path, "kind,note,weight,height\ndog,a,12,35\ncat,b,8,25\n"))
    x, y = examples_for_schema(mine, schema, "classification", ("cat", "dog"))
    assert x.tolist() == [[1.0, 1.0], [-1.0, -1.0]] and y.tolist() == [1, 0]
    lacking = read_csv_table(_write(tmp_path, "kind,weight\ndog,12\n", "lacking.csv"))
    with pytest.raises(DataMismatchError, match="lacks the column.*'height'.*Rename the columns"):
        examples_for_schema(lacking, schema, "classification", ("cat", "dog"))


def test_a_csv_that_is_not_there_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        load_dataset(str(tmp_path / "missing.csv"))
    assert issubclass(TableError, DatasetError) and issubclass(DataMismatchError, DatasetError)
