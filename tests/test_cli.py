"""The command-line contract: JSON keys, files written, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run


@pytest.fixture
def net_file(tmp_path, capsys) -> str:
    path = str(tmp_path / "net.npz")
    assert run(capsys, "net", "--width", "8", "--depth", "2", "--activation", "relu", "--seed", "1",
               "--out", path)[0] == 0
    return path


def test_estimate_kprop_json(capsys, net_file) -> None:
    code, out, _ = run(capsys, "estimate", "--weights", net_file, "--method", "kprop", "--order", "2", "--json")
    record = json.loads(out)
    assert code == 0
    assert {"mean", "flops", "seconds", "method", "order"} <= record.keys()
    assert len(record["mean"]) == 8 and record["method"] == "kprop" and record["order"] == 2
    assert isinstance(record["flops"], int) and record["flops"] > 0


def test_estimate_mc_json(capsys, net_file) -> None:
    code, out, _ = run(capsys, "estimate", "--weights", net_file, "--method", "mc", "--samples", "1e4",
                       "--seed", "3", "--json")
    record = json.loads(out)
    assert code == 0
    assert {"mean", "stderr", "samples", "flops", "seconds", "method"} <= record.keys()
    assert record["samples"] == 10_000 and len(record["stderr"]) == 8


def test_estimate_random_network_without_weights_and_table_output(capsys) -> None:
    code, out, _ = run(capsys, "estimate", "--width", "6", "--depth", "2", "--activation", "tanh", "--seed", "2",
                       "--order", "1")
    assert code == 0 and "kprop K=1" in out and out.count("\n") >= 8


def test_truth_and_score(capsys, net_file, tmp_path) -> None:
    truth = str(tmp_path / "truth.npz")
    assert run(capsys, "truth", "--weights", net_file, "--samples", "20000", "--workers", "0", "--out", truth)[0] == 0
    code, out, _ = run(capsys, "score", "--weights", net_file, "--truth", truth, "--method", "kprop", "--order", "2",
                       "--json")
    record = json.loads(out)
    assert code == 0 and {"mse", "mse_over_var", "noise_floor"} <= record.keys()
    assert record["noise_floor"] == pytest.approx(record["variance"] / 20000)


def truncated_copy(path: str) -> str:
    """The first half of a valid .npz file (a corrupt archive)."""
    data = open(path, "rb").read()
    target = path + ".truncated.npz"
    open(target, "wb").write(data[: len(data) // 2])
    return target


def bad_file(tmp_path, name: str, **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case", ["nan", "shape", "activation", "missing", "npy", "truncated"])
def test_bad_weight_files_give_one_line_and_exit_2(capsys, tmp_path, case: str) -> None:
    files = {
        "nan": lambda: bad_file(tmp_path, "nan.npz", weight_0=np.array([[np.nan, 1.0], [0.0, 1.0]])),
        "shape": lambda: bad_file(tmp_path, "shape.npz", weight_0=np.ones((3, 2)), weight_1=np.ones((2, 4)),
                                  activation=np.array(["relu"])),
        "activation": lambda: bad_file(tmp_path, "act.npz", weight_0=np.ones((2, 2)), weight_1=np.ones((2, 2)),
                                       activation=np.array(["swish"])),
        "missing": lambda: str(tmp_path / "absent.npz"),
        "npy": lambda: (np.save(tmp_path / "single.npy", np.ones((2, 2))), str(tmp_path / "single.npy"))[1],
        "truncated": lambda: truncated_copy(bad_file(tmp_path, "whole.npz", weight_0=np.ones((9, 9)))),
    }
    code, out, err = run(capsys, "estimate", "--weights", files[case](), "--method", "kprop", "--order", "2", "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mechest: error:")


@pytest.mark.parametrize("argv", [
    ["estimate", "--method", "mc", "--samples", "-5"],
    ["estimate", "--method", "mc", "--samples", "lots"],
    ["estimate", "--order", "9"],
    ["estimate", "--method", "mc"],
    ["estimate", "--activation", "swish"],
    ["estimate", "--method", "mc", "--samples", "10", "--seed", "-1"],
    ["net", "--width", "4", "--seed", str(2**70), "--out", "never-written.npz"],
    ["demo", "--reference-samples", "1"],
    ["frobnicate"],
])
def test_bad_options_give_one_line_and_exit_2(argv) -> None:
    completed = subprocess.run([sys.executable, "-m", "mechest.cli", *argv], capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr


def test_no_half_written_output(capsys, tmp_path) -> None:
    target = tmp_path / "missing-dir" / "net.npz"
    code, _, err = run(capsys, "net", "--width", "4", "--out", str(target))
    assert code == 2 and "cannot write" in err and not target.exists()


def test_score_refuses_monte_carlo_with_the_truths_own_seed(capsys, net_file, tmp_path) -> None:
    truth = str(tmp_path / "truth.npz")
    assert run(capsys, "truth", "--weights", net_file, "--samples", "1000", "--seed", "4", "--workers", "0",
               "--out", truth)[0] == 0
    code, _, err = run(capsys, "score", "--weights", net_file, "--truth", truth, "--method", "mc",
                       "--samples", "100", "--seed", "4")
    assert code == 2 and "own seed" in err
