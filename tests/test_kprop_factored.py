"""Factored K = 3 (docs/method.md §7.2): equals the dense engine on its term set, the goldens, costs O(n³)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GOLDEN_NAMES, golden_network
from torch.utils._python_dispatch import TorchDispatchMode

from mechest.errors import MechestError
from mechest.flops import FlopCounter
from mechest.kprop.engine import input_tower, linear_step, nonlinear_step, propagate_general
from mechest.kprop.factored import (
    FactoredTensor,
    contract_vector,
    dense_slice_types,
    factored_linear_map,
    factored_plan,
    factored_slice,
    hidden_states,
    lower_slice_factors,
    propagate_factored,
    reads_top,
    split_dense_plan,
)
from mechest.kprop.plan import compile_plan
from mechest.math.tensors.diagonal_slices import from_dense
from mechest.mlp import random_mlp

NETS = [(activation, width, depth, seed) for activation in ("relu", "tanh") for width, depth, seed in
        ((5, 1, 0), (9, 3, 1), (16, 4, 2))]


def random_factored(n: int, rank: int, seed: int) -> FactoredTensor:
    generator = torch.Generator().manual_seed(seed)
    return FactoredTensor(tuple(torch.randn(n, rank, generator=generator, dtype=torch.float64) for _ in range(3)))


def test_factored_slices_match_the_dense_tensor() -> None:
    tensor = random_factored(6, 4, 0)
    dense = from_dense(tensor.to_dense())
    for p in ((3,), (2, 1)):
        torch.testing.assert_close(factored_slice(tensor, p), dense[p], rtol=0, atol=1e-13)
    with pytest.raises(ValueError):
        factored_slice(tensor, (1, 1, 1))


def test_factored_linear_map_is_the_multilinear_image() -> None:
    tensor, weight = random_factored(5, 3, 1), torch.randn(4, 5, dtype=torch.float64)
    expected = torch.einsum("abc,ia,jb,kc->ijk", tensor.to_dense(), weight, weight, weight)
    torch.testing.assert_close(factored_linear_map(tensor, weight).to_dense(), expected, rtol=0, atol=1e-12)


def test_lower_slice_factors_live_on_repeated_indices_only() -> None:
    n = 5
    cubic = torch.randn(n, dtype=torch.float64)
    double = torch.randn(n, n, dtype=torch.float64) * (1 - torch.eye(n, dtype=torch.float64))
    slices = from_dense(lower_slice_factors(cubic, double).to_dense())
    torch.testing.assert_close(slices[(3,)], cubic, rtol=0, atol=1e-14)
    torch.testing.assert_close(slices[(2, 1)], double, rtol=0, atol=1e-14)
    assert float(slices[(1, 1, 1)].abs().max()) < 1e-14


def test_simple_k3_skips_the_all_distinct_and_trace_free_slices() -> None:
    """κ_4 is a pure trace at K = 3 SIMPLE: only its (4) and (2,2) slices are read, never (3,1) or (2,1,1)."""
    assert dense_slice_types(compile_plan(3, "simple")) == ((1,), (2,), (1, 1), (3,), (2, 1), (4,), (2, 2))


def test_unsupported_configurations_are_refused() -> None:
    for order, variant in ((2, "simple"), (4, "simple"), (4, "augment")):
        with pytest.raises(MechestError):
            factored_plan(order, variant)


def test_augment_k3_traces_only_the_doubled_slice_of_kappa4() -> None:
    """AUGMENT reads κ_4's (2,1,1) slice through one cap; its pieces with κ_3/pK_3 all-distinct come from factors."""
    plan = factored_plan(3, "augment")
    types = dense_slice_types(plan)
    assert (1, 1, 1) not in types and (2, 1, 1) in types
    dense, traced = split_dense_plan(plan)
    assert set(traced.terms) == set(traced.conversions) == {(2, 1, 1)}
    assert all(len(term.blocks) == 1 for term in traced.terms[(2, 1, 1)])
    assert not any(reads_top(term) for p in dense.slice_types for term in dense.diagrams[p])


def test_contract_vector_matches_the_dense_contraction() -> None:
    tensor, vector = random_factored(6, 4, 2), torch.randn(6, dtype=torch.float64)
    expected = torch.einsum("abc,a->bc", tensor.to_dense(), vector)
    torch.testing.assert_close(contract_vector(tensor, vector), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["simple", "augment"])
@pytest.mark.parametrize("activation, width, depth, seed", NETS)
def test_factored_equals_unfactored_on_its_term_set(variant: str, activation: str, width: int, depth: int,
                                                     seed: int) -> None:
    """Every hidden layer: same κ_1, κ_2, κ_4 piece, and κ_3 (densified here only for the check), as the dense
    engine run on the same diagrams (all of them for SIMPLE, the factored term set for AUGMENT)."""
    net = random_mlp(width, depth, activation, bias_mean=0.1, bias_var=0.05, seed=seed)
    plan = compile_plan(3, variant, "factored")
    tower = input_tower(width, plan, net.weights[0])
    for layer, state in enumerate(hidden_states(net, plan)):
        tower = nonlinear_step(linear_step(tower, net.weights[layer], net.biases[layer], set(tower)),
                               net.activations[layer], plan)
        torch.testing.assert_close(state.third.to_dense(), tower[3].to_dense(), rtol=0, atol=1e-12)
        for degree in (1, 2, 4):
            torch.testing.assert_close(state.tower[degree].to_dense(), tower[degree].to_dense(), rtol=0, atol=1e-12)
    factored, unfactored = propagate_factored(net, 3, variant), propagate_general(net, 3, variant, "factored")
    torch.testing.assert_close(factored.mean, unfactored.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(factored.cov, unfactored.cov, rtol=0, atol=1e-12)
    if variant == "simple":  # SIMPLE loses nothing: the factored term set is the full one
        full = propagate_general(net, 3, variant)
        torch.testing.assert_close(factored.mean, full.mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["simple", "augment"])
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_matches_reference_factored_goldens(goldens, name: str, variant: str) -> None:
    data, tag = goldens[name], f"K3__{variant}__factored"
    result = propagate_factored(golden_network(data), 3, variant)
    np.testing.assert_allclose(result.mean.numpy(), data[f"mean__{tag}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.cov.numpy(), data[f"cov__{tag}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.stack([m.numpy() for m in result.layer_means]), data[f"act_mean__{tag}"],
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.stack([c.numpy() for c in result.layer_covs]), data[f"act_cov__{tag}"],
                               rtol=0, atol=1e-10)


def test_rank_grows_by_two_n_per_layer_and_nothing_stored_is_cubic() -> None:
    """One path orbit (n columns) and the lower-slice correction (n columns) per layer; state is matrices only."""
    width, depth = 7, 4
    net = random_mlp(width, depth, "relu", seed=5)
    for layer, state in enumerate(hidden_states(net, compile_plan(3, "simple"))):
        assert state.third.rank == 2 * width * (layer + 1)
        assert all(factor.shape == (width, state.third.rank) for factor in state.third.factors)
        assert all(piece.core.ndim <= 2 for piece in state.tower.values())


class LargestOutput(TorchDispatchMode):
    """Records the largest number of axes of length n among the outputs of every torch operation."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.most = width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch protocol)
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.most = max(self.most, sum(size == self.width for size in out.shape))
        return out


def test_no_width_cubed_tensor_is_ever_allocated() -> None:
    """Width 11 is distinct from every rank (multiples of 22) and from the Wick table's small axes."""
    net = random_mlp(11, 3, "tanh", bias_mean=0.1, bias_var=0.05, seed=6)
    with LargestOutput(11) as watch:
        propagate_factored(net, 3, "simple")
    assert watch.most == 2
    with LargestOutput(11) as watch:
        propagate_general(net, 3, "simple")
    assert watch.most == 3


def flops_per_extra_layer(width: int, factored: bool, variant: str = "simple") -> int:
    """FLOPs of a depth-3 run minus those of a depth-2 run on nets with the same first layers."""
    counts = []
    for depth in (2, 3):
        net = random_mlp(width, depth, "relu", seed=8)
        with FlopCounter() as counter:
            if factored:
                propagate_factored(net, 3, variant)
            else:
                propagate_general(net, 3, variant)
        counts.append(counter.total)
    return counts[1] - counts[0]


@pytest.mark.parametrize("variant", ["simple", "augment"])
def test_cost_of_a_layer_is_cubic_in_width(variant: str) -> None:
    """Doubling n multiplies a warm layer's FLOPs by about 8 factored (n³·l), but about 16 unfactorised (n⁴)."""
    factored = flops_per_extra_layer(32, True, variant) / flops_per_extra_layer(16, True, variant)
    unfactored = flops_per_extra_layer(32, False, variant) / flops_per_extra_layer(16, False, variant)
    assert 6 < factored < 9 < unfactored
