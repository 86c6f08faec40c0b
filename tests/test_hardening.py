"""Hardening: odd-shaped networks through every tail method, overflow, impossible sample counts, requests too
large for memory, unreadable files, unsupported torch modules and silently ignored input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mechest.cli import main
from mechest.errors import MechestError
from mechest.mlp import MLP, from_sequential
from mechest.montecarlo import chunk_generator
from mechest.tail import METHODS as TAIL_METHODS
from mechest.tail import hermite_tail, lpe, marginal_cumulants, tail_probability


def odd_sequential() -> nn.Sequential:
    """A user's 8 → 20 → 12 → 3 network with biases and two different activations."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 3)).double()


@pytest.fixture
def odd_net() -> MLP:
    return from_sequential(odd_sequential())


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# item 1: tail on networks whose widths differ


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_lpe_on_odd_widths_is_the_gram_charlier_tail_of_the_marginals(odd_net: MLP, layer: int) -> None:
    """The Heaviside unit's kprop mean equals Φ̄(x) + κ_3/6 w_H(3) + κ_4/24 w_H(4) of the propagated marginals,
    one value per neuron of the layer (20, 12 or 3 of them)."""
    cumulants = marginal_cumulants(odd_net, layer, 3, "simple")
    result = lpe(odd_net, layer, 0.3, order=3)
    assert result.raw.shape == (odd_net.dims[layer],)
    torch.testing.assert_close(result.raw, hermite_tail(cumulants, 0.3, skew_squared=False), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("upper", [True, False])
def test_monte_carlo_tail_on_odd_widths_counts_exactly(odd_net: MLP, layer: int, upper: bool) -> None:
    """Brute force: the same inputs (chunk 0 of the seed) through forward_layers, counted directly."""
    samples, threshold = 500, 0.2
    result = tail_probability(odd_net, layer, threshold, "mc", upper=upper, samples=samples, seed=4)
    x = torch.randn(samples, 8, generator=chunk_generator(4, 0), dtype=torch.float64)
    z = x
    for index in range(layer):
        z = z @ odd_net.weights[index].T + odd_net.biases[index]
        if index < layer - 1:
            z = torch.relu(z) if index == 0 else torch.tanh(z)
    expected = ((z > threshold) if upper else (z < threshold)).sum(dim=0)
    assert torch.equal(result.counts, expected)


@pytest.mark.parametrize("method", ("kprop",) + TAIL_METHODS)
def test_cli_tail_of_a_users_sequential_net(capsys, tmp_path, method: str) -> None:
    path = tmp_path / "user.npz"
    from_sequential(odd_sequential()).save(path)
    extra = ["--samples", "1000"] if method == "mc" else []
    code, out, err = run(capsys, "tail", "--weights", str(path), "--layer", "2", "--threshold", "0.5",
                         "--method", method, "--json", *extra)
    assert (code, err) == (0, "")
    probabilities = json.loads(out)["prob"]
    assert len(probabilities) == 12 and all(0 <= p <= 1 for p in probabilities)


def test_exceedance_table_refuses_layers_of_different_widths(odd_net: MLP) -> None:
    from mechest.tail import exceedance_table

    with pytest.raises(MechestError, match="different widths"):
        exceedance_table(odd_net, (1, 2), ((0.0, True),), samples=10, seed=0)
