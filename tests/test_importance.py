"""Importance sampling and subset simulation of rare pre-activation events against closed forms and exact
exceedance counts."""

from __future__ import annotations

import math

import pytest
import torch

from mechest.errors import MechestError
from mechest.estimators.importance import check_units, importance_probability, log_weight, subset_probability
from mechest.estimators.tail import monte_carlo
from mechest.mlp import MLP, random_mlp

Z_LIMIT = 4.0  # agreement within 4 combined standard errors (fixed seeds)


def test_log_weight_is_the_density_ratio() -> None:
    """w(x) = ϕ(x) / mean_k ϕ(x − μ_k), checked against the densities themselves; one shift gives the textbook
    exp(−μᵀx + |μ|²/2)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    shifts = torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]], dtype=torch.float64)
    density = torch.exp(-(x * x).sum(dim=1) / 2)
    mixture = torch.stack([torch.exp(-((x - s) ** 2).sum(dim=1) / 2) for s in shifts]).mean(dim=0)
    torch.testing.assert_close(log_weight(x, shifts).exp(), density / mixture)
    single = shifts[1:]
    torch.testing.assert_close(log_weight(x, single), -(x @ single[0]) + (single[0] @ single[0]) / 2)


def test_first_layer_probability_near_1e_minus_9_matches_the_closed_form() -> None:
    """Layer 1 is Gaussian: P(w·x + b > t) = Φ̄((t − b)/|w|). Far below what counting reaches, the estimate must
    agree within Z_LIMIT standard errors, and the standard errors must be small (the design point is exact)."""
    net = random_mlp(5, 1, input_dim=3, output_dim=2, bias_var=0.2, seed=2)
    mean, sigma = net.biases[0], net.weights[0].norm(dim=1)
    threshold = float((mean + 6.0 * sigma).max())
    exact = 0.5 * torch.erfc((threshold - mean) / (sigma * math.sqrt(2)))
    units = [unit for unit, p in enumerate(exact.tolist()) if 1e-12 < p < 1e-8][:2]
    assert len(units) == 2
    result = importance_probability(net, 1, threshold, units, samples=1 << 13, seed=1)
    exact = exact[units]
    z = (result.prob - exact) / result.stderr
    assert float(z.abs().max()) < Z_LIMIT
    assert float((result.stderr / exact).max()) < 0.05
    subset = subset_probability(net, 1, threshold, units, samples=512, repeats=6, seed=1)
    assert float(((subset.prob - exact) / subset.stderr).abs().max()) < Z_LIMIT


@pytest.mark.parametrize(("layer", "threshold", "upper", "units"), [(3, 3.9, True, [2]), (2, -3.0, False, [0, 5])])
def test_agrees_with_exact_counts(layer: int, threshold: float, upper: bool, units: list[int]) -> None:
    """A tiny net with biases, non-square widths (input 4, width 6, output 3), an upper event at the output and a
    lower one after one ReLU layer, true p from 5e-5 to 3e-3: importance sampling vs exact counts of 6·10⁵ inputs."""
    net = random_mlp(6, 2, input_dim=4, output_dim=3, bias_var=0.1, seed=3)
    counts = monte_carlo(net, layer, threshold, upper, samples=600_000, seed=1)
    result = importance_probability(net, layer, threshold, units, upper=upper, samples=1 << 14, seed=2)
    exact = counts.prob[units]
    count_error = torch.sqrt(exact * (1 - exact) / counts.samples)
    z = (result.prob - exact) / torch.sqrt(result.stderr**2 + count_error**2)
    assert bool((counts.counts[units] >= 20).all())
    assert float(z.abs().max()) < Z_LIMIT
    assert result.flops > 0 and result.samples == 1 << 14
    subset = subset_probability(net, layer, threshold, units, upper=upper, samples=1024, repeats=6, seed=2)
    z = (subset.prob - exact) / torch.sqrt(subset.stderr**2 + count_error**2)
    assert float(z.abs().max()) < Z_LIMIT


def test_an_impossible_event_has_probability_zero() -> None:
    """z = W relu(·) with W ≥ 0 is never negative: no design point is found, and the estimate is exactly 0."""
    net = random_mlp(4, 1, input_dim=3, output_dim=2, seed=0)
    positive = MLP([net.weights[0], net.weights[1].abs()], [None, None], net.activations)
    result = importance_probability(positive, 2, -0.5, upper=False, samples=256, seed=0)
    assert result.prob.tolist() == [0.0, 0.0]
    assert [len(shift) for shift in result.shifts] == [2, 2]  # defensive and cross-entropy means, no design point


def test_subset_simulation_of_an_impossible_event_is_zero_and_needs_repeats() -> None:
    net = random_mlp(4, 1, input_dim=3, output_dim=2, seed=0)
    positive = MLP([net.weights[0], net.weights[1].abs()], [None, None], net.activations)
    assert subset_probability(positive, 2, -0.5, upper=False, samples=64, repeats=2).prob.tolist() == [0.0, 0.0]
    with pytest.raises(MechestError, match="repeats"):
        subset_probability(positive, 2, -0.5, upper=False, repeats=1)


def test_bad_units() -> None:
    with pytest.raises(MechestError, match="out of range"):
        check_units([0, 7], 7)
    with pytest.raises(MechestError, match="repeat"):
        check_units([1, 1], 7)
    with pytest.raises(MechestError, match="no units"):
        check_units([], 7)
