"""Output files: atomic writes that clean up without raising again, and output paths checked before any work."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run

import mechest.cli
import mechest.estimators.montecarlo
import mechest.experiments.bench
import mechest.experiments.training
import mechest.experiments.training_plots
from mechest.errors import MechestError
from mechest.files import atomic_path, check_output_directory, check_output_path, write_npz_atomically
from mechest.mlp import random_mlp


def can_create_in(directory: Path) -> bool:
    probe = directory / f".mechest-test-probe-{os.getpid()}"
    try:
        probe.touch(exist_ok=False)
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def unwritable_dir(tmp_path_factory):
    """A folder in which this process cannot create files: a mode-555 folder, or /sys where the tests run as root
    (root ignores permission bits; sysfs refuses new files even to root)."""
    read_only = tmp_path_factory.mktemp("read-only")
    read_only.chmod(0o555)
    try:
        found = next((d for d in (read_only, Path("/sys")) if d.is_dir() and not can_create_in(d)), None)
        if found is None:
            pytest.skip("no folder here refuses new files")
        yield found
    finally:
        read_only.chmod(0o755)


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.count("\n") == 1 and err.startswith("mechest: error:"), err
    assert all(word in err for word in words), err


def test_a_failed_write_cleans_up_without_raising_again(tmp_path, monkeypatch) -> None:
    """On a read-only mount even removing the temporary file fails (EROFS): still one MechestError."""
    def savez_then_fail(handle, **arrays):
        handle.write(b"half an archive")
        raise OSError(errno.EROFS, "Read-only file system")

    def unlink_fails(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    monkeypatch.setattr(Path, "unlink", unlink_fails)
    with pytest.raises(MechestError, match="cannot write .*out.npz: Read-only file system"):
        write_npz_atomically(tmp_path / "out.npz", {"a": np.ones(2)})


def test_a_failed_write_leaves_no_file(tmp_path) -> None:
    with pytest.raises(MechestError, match="cannot write"), atomic_path(tmp_path / "out.txt") as temporary:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_umask_permissions(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        write_npz_atomically(tmp_path / "out.npz", {"a": np.arange(3)})
    finally:
        os.umask(umask)
    assert (tmp_path / "out.npz").stat().st_mode & 0o777 == 0o644
    assert np.load(tmp_path / "out.npz")["a"].tolist() == [0, 1, 2]


def test_output_checks(tmp_path, unwritable_dir) -> None:
    assert check_output_path(tmp_path / "a.npz") == tmp_path / "a.npz"
    assert check_output_directory(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # the probes are gone
    with pytest.raises(MechestError, match="is a directory"):
        check_output_path(tmp_path)
    with pytest.raises(MechestError, match="does not exist"):
        check_output_path(tmp_path / "absent" / "a.npz")
    (tmp_path / "file").touch()
    with pytest.raises(MechestError, match="is not a directory"):
        check_output_directory(tmp_path / "file" / "sub")
    with pytest.raises(MechestError, match="is not writable"):
        check_output_path(unwritable_dir / "a.npz")
    with pytest.raises(MechestError, match="is not writable"):
        check_output_directory(unwritable_dir / "new")


@pytest.fixture
def net_file(tmp_path, capsys) -> str:
    path = str(tmp_path / "net.npz")
    assert run(capsys, "net", "--width", "5", "--depth", "2", "--seed", "1", "--out", path)[0] == 0
    return path


def no_work(*args, **kwargs):
    raise AssertionError("work started before the output path was checked")


def test_truth_checks_its_output_before_sampling(capsys, monkeypatch, net_file, unwritable_dir) -> None:
    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", no_work)
    code, out, err = run(capsys, "truth", "--weights", net_file, "--samples", "1000", "--workers", "0",
                         "--out", str(unwritable_dir / "truth.npz"))
    assert_one_line_error(code, err, "not writable")
    assert out == ""


@pytest.mark.parametrize("command", ["net", "bench", "tail-bench", "whestbench-export", "whestbench-score"])
def test_writing_commands_check_their_output_first(capsys, monkeypatch, unwritable_dir, command: str) -> None:
    monkeypatch.setattr(mechest.cli, "random_mlp", no_work)
    monkeypatch.setattr(mechest.experiments.bench, "run_bench", no_work)
    monkeypatch.setattr(mechest.cli, "score_round", no_work)
    target = str(unwritable_dir / "out")
    argv = {"net": ["net", "--width", "4", "--out", target + ".npz"],
            "bench": ["bench", "--quick", "--workers", "0", "--results", target],
            "tail-bench": ["tail-bench", "--width", "4", "--depth", "1", "--results", target],
            "whestbench-export": ["whestbench", "export", "--out", target],
            "whestbench-score": ["whestbench", "score", "--data-dir", target]}[command]
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, "not writable")
    assert out == ""
    assert not Path(target).exists() and not Path(target + ".npz").exists()


@pytest.fixture
def teacher_file(tmp_path) -> Path:
    path = tmp_path / "teacher.npz"
    random_mlp(5, 1, input_dim=3, output_dim=2, seed=1).save(path)
    return path


def distill_argv(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--student-width", "3", "--steps", "2", "--log-every", "1",
            "--test-samples", "64", "--no-baseline", "--out", str(out), *extra]


@pytest.mark.parametrize("case", ["out unwritable", "plot unwritable", "json unwritable", "plot format",
                                  "same file"])
def test_distill_checks_every_output_before_training(capsys, monkeypatch, tmp_path, teacher_file, unwritable_dir,
                                                     case: str) -> None:
    monkeypatch.setattr(mechest.experiments.training, "distill", no_work)
    out, blocked = tmp_path / "student.npz", str(unwritable_dir / "x")
    extra = {"out unwritable": [], "plot unwritable": ["--plot", blocked + ".png"],
             "json unwritable": ["--json", blocked + ".json"], "plot format": ["--plot", str(tmp_path / "loss.xyz")],
             "same file": ["--json", str(out)]}[case]
    code, stdout, err = run(capsys, *distill_argv(teacher_file, unwritable_dir / "s.npz" if case == "out unwritable"
                                                  else out, *extra))
    assert_one_line_error(code, err, {"plot format": "no image format 'xyz'",
                                      "same file": "different files"}.get(case, "not writable"))
    assert stdout == "" and sorted(path.name for path in tmp_path.iterdir()) == ["teacher.npz"]


def test_distill_writes_nothing_when_the_plot_fails(capsys, monkeypatch, tmp_path, teacher_file) -> None:
    def plot_fails(*args, **kwargs):
        raise MechestError("the plot failed")

    monkeypatch.setattr(mechest.experiments.training_plots, "plot_runs", plot_fails)
    code, _, err = run(capsys, *distill_argv(teacher_file, tmp_path / "student.npz", "--plot",
                                             str(tmp_path / "loss.png"), "--json", str(tmp_path / "log.json")))
    assert_one_line_error(code, err, "the plot failed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["teacher.npz"]
