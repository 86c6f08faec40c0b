"""The truth files committed under benchmarks/data/truths belong to the networks they claim and are sane."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechest.estimators.truth import load_truth, score
from mechest.kprop import Scheme, propagate
from mechest.mlp import random_mlp

TRUTHS = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "truths"
FILES = sorted(TRUTHS.glob("*-100000000.npz"))


def test_there_are_truths_for_three_seeds() -> None:
    assert len(FILES) >= 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_truth_of_each_seed_matches_its_network_and_kprop(seed: int) -> None:
    net = random_mlp(256, 4, "relu", seed=seed)
    path = TRUTHS / f"{net.fingerprint()}-100000000.npz"
    truth = load_truth(path)
    assert truth.fingerprint == net.fingerprint() and truth.samples == 10**8 and truth.seed == 1000 + seed
    # K = 2 simple is off by MSE/Var ≈ 4e-5 at this width (docs/results.md); a truth of another network or a
    # corrupted file would be off by O(1).
    measured = score(propagate(net, Scheme(2, "simple")).mean.to(torch.float64), truth)
    assert 1e-6 < measured.relative < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_billion_sample_truth_of_each_width_64_seed_matches_its_network_and_kprop(seed: int) -> None:
    net = random_mlp(64, 4, "relu", seed=seed)
    truth = load_truth(TRUTHS / f"{net.fingerprint()}-1000000000.npz")
    assert truth.fingerprint == net.fingerprint() and truth.samples == 10**9 and truth.seed == 1000 + seed
    # K = 2 simple is off by MSE/Var ≈ 8e-4 at this width, K = 3 augment by ≈ 1e-5 (docs/results.md).
    assert 1e-4 < score(propagate(net, Scheme(2, "simple")).mean, truth).relative < 5e-3
    assert 1e-7 < score(propagate(net, Scheme(3, "augment")).mean, truth).relative < 1e-4
