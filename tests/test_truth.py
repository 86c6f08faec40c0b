"""Ground-truth files, resuming an interrupted run, and scoring with the noise floor."""

from __future__ import annotations

import numpy as np
import pytest

import mechest.estimators.montecarlo
import mechest.estimators.truth
from mechest.errors import MechestError
from mechest.estimators.truth import Truth, compute_truth, load_truth, score
from mechest.mlp import random_mlp


def test_truth_file_round_trip(tmp_path) -> None:
    net = random_mlp(4, 2, seed=0)
    truth = compute_truth(net, 5000, tmp_path / "t.npz", seed=3, chunk_size=1024)
    back = load_truth(tmp_path / "t.npz")
    assert back.samples == 5000 and back.seed == 3 and back.fingerprint == net.fingerprint()
    np.testing.assert_array_equal(back.mean, truth.mean)
    assert not (tmp_path / "t.npz.checkpoint.npz").exists()


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch) -> None:
    net = random_mlp(4, 2, seed=0)
    reference = compute_truth(net, 5000, tmp_path / "whole.npz", seed=3, chunk_size=512)
    monkeypatch.setattr(mechest.estimators.truth, "CHECKPOINT_SECONDS", 0.0)
    original = mechest.estimators.montecarlo.chunk_moments

    def failing(net, seed, chunk, size):
        if chunk == 6:
            raise KeyboardInterrupt
        return original(net, seed, chunk, size)

    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", failing)
    with pytest.raises(KeyboardInterrupt):
        compute_truth(net, 5000, tmp_path / "part.npz", seed=3, chunk_size=512)
    assert not (tmp_path / "part.npz").exists()
    assert (tmp_path / "part.npz.checkpoint.npz").exists()
    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", original)
    resumed = compute_truth(net, 5000, tmp_path / "part.npz", seed=3, chunk_size=512)
    np.testing.assert_array_equal(resumed.mean, reference.mean)
    np.testing.assert_array_equal(resumed.variance, reference.variance)


def test_score_subtracts_noise_floor() -> None:
    truth = Truth(np.array([1.0, 2.0]), np.array([4.0, 8.0]), 100, 0, "x")
    measured = score(np.array([1.5, 2.0]), truth)
    assert measured.mse == pytest.approx(0.125)
    assert measured.variance == pytest.approx(6.0)
    assert measured.noise_floor == pytest.approx(0.06)
    assert measured.relative == pytest.approx((0.125 - 0.06) / 6.0)
    with pytest.raises(MechestError, match="shape"):
        score(np.zeros(3), truth)


def test_unwritable_output_and_bad_truth_files(tmp_path) -> None:
    with pytest.raises(MechestError, match="does not exist"):
        compute_truth(random_mlp(3, 1), 10, tmp_path / "missing" / "t.npz")
    np.savez(tmp_path / "other.npz", something=np.zeros(2))
    with pytest.raises(MechestError, match="not a mechest truth file"):
        load_truth(tmp_path / "other.npz")


def test_checkpoint_of_another_dtype_is_not_resumed(tmp_path, monkeypatch) -> None:
    """float32 and float64 draw different sample streams: a float32 checkpoint must not seed a float64 run."""
    import torch

    net = random_mlp(4, 2, seed=0)
    reference = compute_truth(net, 2048, tmp_path / "whole.npz", seed=3, chunk_size=512)
    monkeypatch.setattr(mechest.estimators.truth, "CHECKPOINT_SECONDS", 0.0)
    original = mechest.estimators.montecarlo.chunk_moments

    def failing(net, seed, chunk, size):
        if chunk == 2:
            raise KeyboardInterrupt
        return original(net, seed, chunk, size)

    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", failing)
    with pytest.raises(KeyboardInterrupt):
        compute_truth(net, 2048, tmp_path / "part.npz", seed=3, chunk_size=512, dtype=torch.float32)
    monkeypatch.setattr(mechest.estimators.montecarlo, "chunk_moments", original)
    resumed = compute_truth(net, 2048, tmp_path / "part.npz", seed=3, chunk_size=512)
    np.testing.assert_array_equal(resumed.mean, reference.mean)


def test_zero_variance_gives_nan_relative_error() -> None:
    truth = Truth(np.array([1.0]), np.array([0.0]), 10, 0, "x")
    assert np.isnan(score(np.array([1.0]), truth).relative)
