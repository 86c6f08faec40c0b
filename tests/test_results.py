"""The results store: Parquet part files written atomically, read back concatenated, filtered, printed."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from mechest.cli import main
from mechest.errors import MechestError
from mechest.results import (
    COLUMNS,
    filter_rows,
    new_run_id,
    parse_filter,
    read_runs,
    runs_dir,
    write_part,
)


def kprop_row(width: int, order: int, mse: float) -> dict:
    return {"width": width, "depth": 4, "activation": "relu", "net_seed": 0, "weights_hash": f"h{width}",
            "method": "kprop", "order": order, "variant": "simple", "factored": False, "flops_raw": 1e6 * order,
            "flops_discounted": 5e5 * order, "seconds": 0.1, "mse": mse, "mse_over_var": mse / 2}


def mc_row(samples: int) -> dict:
    return {"width": 8, "depth": 4, "method": "mc", "samples": samples, "flops_raw": 100.0 * samples}


def test_round_trip_with_missing_columns_as_null(tmp_path) -> None:
    rows = [kprop_row(8, 2, 1e-3), mc_row(1000)]
    write_part(tmp_path, "run", 0, rows)
    back = read_runs(tmp_path).to_pylist()
    assert [set(row) for row in back] == [set(COLUMNS)] * 2
    for original, read in zip(rows, back):
        assert {key: read[key] for key in original} == original
        assert all(read[key] is None for key in set(COLUMNS) - set(original))


def test_parts_of_concurrent_writers_are_all_read(tmp_path) -> None:
    def writer(index: int) -> None:
        run_id = new_run_id()
        for part in range(3):
            write_part(tmp_path, run_id, part, [kprop_row(8 + index, 1 + part, 0.1 * (index + 1))])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(8)))
    table = read_runs(tmp_path)
    assert table.num_rows == 24
    assert sorted(zip(table["width"].to_pylist(), table["order"].to_pylist())) == sorted(
        (8 + index, 1 + part) for index in range(8) for part in range(3))


def test_unfinished_writes_are_invisible_and_an_empty_store_is_empty(tmp_path) -> None:
    assert read_runs(tmp_path).num_rows == 0
    write_part(tmp_path, "run", 0, [mc_row(10)])
    (runs_dir(tmp_path) / ".run-0001.parquet.abc.partial").write_bytes(b"half a file")
    assert read_runs(tmp_path).num_rows == 1


def test_bad_input_is_a_mechest_error(tmp_path) -> None:
    with pytest.raises(MechestError, match="unknown result columns"):
        write_part(tmp_path, "run", 0, [{"colour": "red"}])
    assert not list(runs_dir(tmp_path).glob("*"))
    (runs_dir(tmp_path) / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(MechestError, match="cannot read"):
        read_runs(tmp_path)
    with pytest.raises(MechestError, match="no results directory"):
        read_runs(tmp_path / "missing")
    for text in ("width", "colour=red"):
        with pytest.raises(MechestError, match="bad filter"):
            parse_filter(text)


def test_filters_compare_numbers_booleans_and_nulls() -> None:
    rows = [kprop_row(8, 2, 1e-3), kprop_row(16, 3, 1e-4), mc_row(1000)]
    assert filter_rows(rows, [parse_filter("width=16")]) == [rows[1]]
    assert filter_rows(rows, [parse_filter("order=2.0"), parse_filter("factored=false")]) == [rows[0]]
    assert filter_rows(rows, [parse_filter("method=mc"), parse_filter("samples=1e3")]) == [rows[2]]
    assert filter_rows(rows, [parse_filter("order=none")]) == [rows[2]]


def test_results_command_prints_filtered_csv(tmp_path, capsys) -> None:
    write_part(tmp_path, "run", 0, [kprop_row(8, 2, 1e-3), kprop_row(16, 3, 1e-4), mc_row(1000)])
    assert main(["results", "--results", str(tmp_path), "--where", "method=kprop", "--columns", "width", "order",
                 "--csv"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [["width", "order"], ["8", "2"], ["16", "3"]]
    assert main(["results", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("3 rows")


@pytest.mark.parametrize("argv", [["--columns", "colour"], ["--where", "colour=red"], ["--results", "missing"]])
def test_results_command_bad_input_is_one_line_exit_2(tmp_path, capsys, argv) -> None:
    write_part(tmp_path, "run", 0, [mc_row(10)])
    arguments = ["results", "--results", str(tmp_path)] + [str(tmp_path / a) if a == "missing" else a for a in argv]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("mechest: error:") and error.count("\n") == 1
