"""Pair-factored K = 4 SIMPLE propagation (docs/method.md §7.5): equals the unfactorised engine and the goldens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GOLDEN_NAMES, golden_network

from mechest.errors import MechestError
from mechest.flops import FlopCounter
from mechest.kprop import Scheme, propagate
from mechest.kprop.engine import input_tower, linear_step, nonlinear_step, propagate_general
from mechest.kprop.factored4 import (
    PairFactoredTensor,
    factored_plan4,
    hidden_states4,
    lower_slice_pairs,
    pair_linear_map,
    pair_slice,
)
from mechest.math.tensors.diagonal_slices import from_dense
from mechest.mlp import random_mlp

REPEATED = ((4,), (3, 1), (2, 2), (2, 1, 1))


def random_pairs(n: int, rank: int, seed: int) -> PairFactoredTensor:
    generator = torch.Generator().manual_seed(seed)
    first, second = (torch.randn(rank, n, n, generator=generator, dtype=torch.float64) for _ in range(2))
    return PairFactoredTensor((first + first.transpose(1, 2)) / 2, (second + second.transpose(1, 2)) / 2)


def test_pair_slices_match_the_dense_tensor() -> None:
    tensor = random_pairs(6, 3, 0)
    dense = from_dense(tensor.to_dense())
    for p in (*REPEATED, (1, 1, 1, 1)):
        torch.testing.assert_close(pair_slice(tensor, p), dense[p], rtol=0, atol=1e-12)


def test_pair_linear_map_is_the_multilinear_image() -> None:
    tensor, weight = random_pairs(5, 2, 1), torch.randn(4, 5, dtype=torch.float64)
    expected = torch.einsum("abcd,ia,jb,kc,ld->ijkl", tensor.to_dense(), weight, weight, weight, weight)
    torch.testing.assert_close(pair_linear_map(tensor, weight).to_dense(), expected, rtol=0, atol=1e-11)


def test_lower_slice_pairs_live_on_repeated_indices_only() -> None:
    """Arbitrary symmetric slice values for (4), (3,1), (2,2), (2,1,1) come back exactly; distinct entries are 0."""
    reference = from_dense(random_pairs(5, 2, 3).to_dense())
    slices = from_dense(lower_slice_pairs({q: reference[q] for q in REPEATED}).to_dense())
    for q in REPEATED:
        torch.testing.assert_close(slices[q], reference[q], rtol=0, atol=1e-12)
    assert float(slices[(1, 1, 1, 1)].abs().max()) < 1e-13


def test_unsupported_configurations_are_refused() -> None:
    for order, variant in ((3, "simple"), (4, "augment")):
        with pytest.raises(MechestError):
            factored_plan4(order, variant)


@pytest.mark.parametrize("activation, width, depth, seed", [("relu", 6, 3, 0), ("tanh", 7, 3, 1), ("gelu", 5, 4, 2)])
def test_factored_equals_unfactored(activation: str, width: int, depth: int, seed: int) -> None:
    """Every hidden layer: same κ_1, κ_2, κ_3, and κ_4 (densified here only for the check)."""
    net = random_mlp(width, depth, activation, bias_mean=0.1, bias_var=0.05, seed=seed)
    plan = factored_plan4(4, "simple")
    tower = input_tower(width, plan, net.weights[0])
    for layer, state in enumerate(hidden_states4(net, plan)):
        tower = nonlinear_step(linear_step(tower, net.weights[layer], net.biases[layer], set(tower)),
                               net.activations[layer], plan)
        torch.testing.assert_close(state.fourth.to_dense(), tower[4].to_dense(), rtol=0, atol=1e-12)
        for degree in (1, 2, 3):
            torch.testing.assert_close(state.tower[degree].to_dense(), tower[degree].to_dense(), rtol=0, atol=1e-12)
    factored, unfactored = propagate(net, Scheme(4, "simple", True)), propagate_general(net, 4, "simple")
    for ours, theirs in ((factored.mean, unfactored.mean), (factored.cov, unfactored.cov),
                         (factored.third, unfactored.third)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_matches_reference_factored_goldens(goldens, name: str) -> None:
    data, tag = goldens[name], "K4__simple__factored"
    result = propagate(golden_network(data), Scheme(4, "simple", True))
    np.testing.assert_allclose(result.mean.numpy(), data[f"mean__{tag}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.cov.numpy(), data[f"cov__{tag}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.stack([m.numpy() for m in result.layer_means]), data[f"act_mean__{tag}"],
                               rtol=0, atol=1e-10)


def test_rank_grows_by_four_n_per_layer() -> None:
    """Three hypertree orbits and the lower-slice correction add n pairs each per layer (at the first layer the
    "3+2" orbit is absent: the input has no κ_3)."""
    width = 5
    net = random_mlp(width, 3, "relu", seed=4)
    ranks = [state.fourth.rank for state in hidden_states4(net, factored_plan4(4, "simple"))]
    assert ranks == [3 * width, 7 * width, 11 * width]


def flops_per_extra_layer(width: int) -> int:
    counts = []
    for depth in (2, 3):
        with FlopCounter() as counter:
            propagate(random_mlp(width, depth, "relu", seed=8), Scheme(4, "simple", True))
        counts.append(counter.total)
    return counts[1] - counts[0]


def test_cost_of_a_layer_is_quartic_in_width() -> None:
    """Doubling n multiplies a warm layer's FLOPs by about 16 (n⁴·l), not 32 (the dense n⁵ step)."""
    assert 12 < flops_per_extra_layer(16) / flops_per_extra_layer(8) < 20
