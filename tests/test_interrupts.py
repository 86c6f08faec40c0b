"""Runs that stop or collide: SIGTERM checkpoints like Ctrl-C, and a lock keeps two runs off one output."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run

import mechest.cli
import mechest.estimators.montecarlo
from mechest.files import atomic_path


@pytest.fixture
def net_file(tmp_path, capsys) -> str:
    path = str(tmp_path / "net.npz")
    assert run(capsys, "net", "--width", "6", "--depth", "2", "--seed", "2", "--out", path)[0] == 0
    return path


def truth_argv(net_file: str, out: Path) -> list[str]:
    return ["truth", "--weights", net_file, "--samples", "4000", "--chunk-size", "1000", "--seed", "5",
            "--workers", "0", "--out", str(out)]


def test_sigterm_writes_the_checkpoint_and_the_same_command_resumes(capsys, monkeypatch, tmp_path, net_file) -> None:
    out = tmp_path / "truth.npz"
    local = mechest.cli.run_chunks_locally

    def terminated_after_one_chunk(*args):
        for chunk, moments in local(*args):
            yield chunk, moments
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(mechest.cli, "run_chunks_locally", terminated_after_one_chunk)
    ignored = []  # without mechest's own handler the signal would land here, and the run would go on
    previous = signal.signal(signal.SIGTERM, lambda *_: ignored.append(1))
    try:
        code, _, err = run(capsys, *truth_argv(net_file, out))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (code, err, ignored) == (128 + signal.SIGTERM, "mechest: terminated\n", [])
    assert np.load(tmp_path / "truth.npz.checkpoint.npz")["count"] == 1000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["net.npz", "truth.npz.checkpoint.npz"]

    monkeypatch.setattr(mechest.cli, "run_chunks_locally", local)
    code, _, err = run(capsys, *truth_argv(net_file, out))
    assert code == 0 and f"resuming from 1000 of 4000 samples in {out}.checkpoint.npz" in err
    code, _, _ = run(capsys, *truth_argv(net_file, tmp_path / "straight.npz"))
    assert code == 0
    assert np.array_equal(np.load(out)["mean"], np.load(tmp_path / "straight.npz")["mean"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["net.npz", "straight.npz", "truth.npz"]


def finished_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def no_work(*args, **kwargs):
    raise AssertionError("a second run on the same output started working")


@pytest.mark.parametrize("owner", ["running here", "on another machine"])
def test_a_second_run_on_the_same_output_stops(capsys, monkeypatch, tmp_path, net_file, owner: str) -> None:
    out = tmp_path / "truth.npz"
    lock = tmp_path / "truth.npz.lock"
    text = {"running here": f"{os.getppid()} {socket.gethostname()}",
            "on another machine": f"{finished_pid()} not-{socket.gethostname()}"}[owner]
    lock.write_text(text)
    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", no_work)
    code, out_text, err = run(capsys, *truth_argv(net_file, out))
    assert code == 2 and out_text == "" and err.count("\n") == 1
    assert "being written by another mechest run" in err and text in err
    assert lock.read_text() == text  # the other run's lock stays


def test_a_lock_left_by_a_dead_process_is_taken_over(capsys, tmp_path, net_file) -> None:
    lock = tmp_path / "truth.npz.lock"
    lock.write_text(f"{finished_pid()} {socket.gethostname()}")
    assert run(capsys, *truth_argv(net_file, tmp_path / "truth.npz"))[0] == 0
    assert (tmp_path / "truth.npz").is_file() and not lock.exists()


def test_concurrent_writers_use_their_own_temporary_files(tmp_path) -> None:
    target = tmp_path / "out.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and str(os.getpid()) in first.name
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer block finishes last
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]
