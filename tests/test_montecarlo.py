"""Monte Carlo: exact streaming merges, resumability, unbiasedness against closed forms, FLOP accounting."""

from __future__ import annotations

import math

import pytest
import torch

from mechest.errors import MechestError
from mechest.estimators.estimate import estimate
from mechest.estimators.montecarlo import RunningMoments, chunk_count, chunk_size_of, sample_moments
from mechest.flops import FlopCounter
from mechest.mlp import MLP, random_mlp


def test_merge_equals_moments_of_concatenation() -> None:
    values = torch.randn(1000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5 + 2
    merged = RunningMoments.empty(3)
    for block in torch.split(values, [1, 300, 99, 600]):
        merged = merged.merge(RunningMoments.of_batch(block))
    whole = RunningMoments.of_batch(values)
    assert merged.count == 1000
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(merged.m2, whole.m2, rtol=1e-12, atol=0)


def test_chunk_sizes_cover_the_sample_count() -> None:
    assert [chunk_size_of(c, 10, 4) for c in range(chunk_count(10, 4))] == [4, 4, 2]
    assert [chunk_size_of(c, 8, 4) for c in range(chunk_count(8, 4))] == [4, 4]
    assert chunk_count(10**30, 2**16) * 2**16 >= 10**30  # no per-chunk list: huge counts are fine


def test_resumed_run_is_bit_identical() -> None:
    net = random_mlp(5, 2, seed=0)
    whole = sample_moments(net, 1000, seed=7, chunk_size=128)
    first = sample_moments(net, 512, seed=7, chunk_size=128)
    resumed = sample_moments(net, 1000, seed=7, chunk_size=128, start=first)
    assert torch.equal(whole.mean, resumed.mean) and torch.equal(whole.m2, resumed.m2)


def test_different_seeds_give_different_samples() -> None:
    net = random_mlp(5, 2, seed=0)
    assert not torch.equal(sample_moments(net, 64, seed=1).mean, sample_moments(net, 64, seed=2).mean)


def relu_one_hidden_layer_mean(net: MLP) -> torch.Tensor:
    """Closed form: E[relu(z)] = σφ(μ/σ) + μΦ(μ/σ) for z ~ N(μ, σ²), then the output map."""
    mu = net.biases[0] if net.biases[0] is not None else torch.zeros(net.weights[0].shape[0], dtype=torch.float64)
    sigma = net.weights[0].norm(dim=1)
    alpha = mu / sigma
    hidden = sigma * torch.exp(-alpha**2 / 2) / math.sqrt(2 * math.pi) + mu * torch.special.ndtr(alpha)
    out = net.weights[1] @ hidden
    return out if net.biases[1] is None else out + net.biases[1]


def test_monte_carlo_mean_within_five_standard_errors_of_closed_form() -> None:
    net = random_mlp(16, 1, "relu", bias_mean=0.2, bias_var=0.1, seed=5)
    result = estimate(net, "mc", samples=200_000, seed=3)
    z = (result.mean - relu_one_hidden_layer_mean(net)) / result.stderr
    assert float(z.abs().max()) < 5
    # the z-scores of 16 independent-ish coordinates should not all be tiny either (the stderr is honest)
    assert 0.2 < float(z.pow(2).mean()) < 3


def test_flops_per_sample_matches_counted_forward_pass() -> None:
    net = random_mlp(12, 3, "relu", input_dim=5, output_dim=4, bias_mean=0.1, seed=0)
    batch = 64
    with FlopCounter() as counter:
        net(torch.zeros(batch, 5, dtype=torch.float64))
    assert counter.total == batch * net.flops_per_sample()
    assert net.flops_per_sample() == 2 * (5 * 12 + 12 * 12 * 2 + 12 * 4) + (3 * 12 + 4) + 3 * 12
    assert estimate(net, "mc", samples=10).flops == 10 * net.flops_per_sample()


@pytest.mark.parametrize("samples", [0, -5, 2.5])
def test_bad_sample_counts(samples) -> None:
    with pytest.raises(MechestError, match="sample count"):
        estimate(random_mlp(3, 1), "mc", samples=samples)
