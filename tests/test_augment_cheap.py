"""The matrix-core option of the K = 3 executor (mechest.kprop.executor.FourthCore, docs/method.md §7.8): off it is
the reference bit for bit; on it equals the dense engine run on its plan (mechest.kprop.spec.fourth_core_plan), on
torch and numpy; as the scheme K = 3 core factored it is FourthCore(summed=False)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_numpy_matches_torch, odd_network

import mechest
from mechest.estimators.tail import dense_marginals
from mechest.kprop import executor as xprop
from mechest.kprop.backends import layers_of, torch_backend
from mechest.kprop.engine import collect_propagation, dense_towers, input_tower
from mechest.kprop.plan import Plan
from mechest.kprop.result import Propagation
from mechest.kprop.spec import executor_spec, fourth_core_plan, fourth_core_spec


@pytest.fixture(scope="module")
def spec() -> dict:
    return fourth_core_spec(executor_spec(3, "simple", max_width=16))


def net_of(width: int, depth: int, seed: int) -> mechest.MLP:
    return mechest.random_mlp(width, depth, "relu", bias_var=0.05, seed=seed).to(dtype=torch.float64)


def assert_matches_dense(result: xprop.Cumulants, dense: Propagation, net: mechest.MLP, plan: Plan,
                         outputs: str) -> None:
    """The executor's output mean (and covariance, marginal κ_3 and κ_4 where asked for) equal the dense
    engine's on the same plan."""
    torch.testing.assert_close(result.mean, dense.mean, rtol=1e-10, atol=1e-12)
    if outputs != "mean":
        torch.testing.assert_close(result.cov, dense.cov, rtol=1e-10, atol=1e-12)
    if outputs == "marginals":
        rows = dense_marginals(net, plan)
        torch.testing.assert_close(result.third_diagonal, rows[2], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result.fourth_diagonal, rows[3], rtol=1e-10, atol=1e-12)


def test_off_is_the_reference_bit_for_bit(spec: dict) -> None:
    net = net_of(8, 3, 0)
    plain = executor_spec(3, "simple", max_width=16)
    for outputs in ("mean", "cov", "marginals"):
        reference = xprop.planned(torch_backend(net.device), layers_of(net), plain, outputs=outputs)
        with_data = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs, core=None)
        for name in ("mean", "cov", "third_diagonal", "fourth_diagonal"):
            ours, theirs = getattr(with_data, name), getattr(reference, name)
            assert (ours is None and theirs is None) or torch.equal(ours, theirs), (outputs, name)


@pytest.mark.parametrize(("width", "depth", "outputs", "two", "summed"),
                         [(8, 3, "mean", False, True), (12, 4, "cov", False, True), (6, 2, "mean", False, True),
                          (8, 4, "mean", True, True), (10, 3, "cov", True, True), (7, 3, "marginals", True, True),
                          (9, 4, "cov", False, False), (8, 3, "marginals", False, False)])
def test_matches_the_dense_engine_on_its_plan(spec: dict, width: int, depth: int, outputs: str, two: bool,
                                              summed: bool) -> None:
    net = net_of(width, depth, width + depth)
    plan = fourth_core_plan(two, summed)
    dense = collect_propagation(net, input_tower(net.input_dim, plan, net.weights[0]), dense_towers(net, plan))
    result = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs,
                           core=xprop.FourthCore(summed=summed, two=two))
    assert_matches_dense(result, dense, net, plan, outputs)
    reference = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs)
    assert (reference.mean - dense.mean).abs().max() > 1e-6  # the option changes the estimate


def test_numpy_namespace_equals_torch(spec: dict) -> None:
    assert_numpy_matches_torch(layers_of(net_of(8, 3, 1)), spec, core=xprop.FourthCore(two=True))


def test_the_core_scheme_is_the_option_without_the_capped_sum() -> None:
    net = net_of(9, 3, 4)
    scheme = mechest.Scheme(3, "core", factored=True)
    result = mechest.estimate(net, scheme=scheme, count=False)
    expected = xprop.planned(torch_backend(net.device), layers_of(net), executor_spec(3, "core", max_width=64),
                             outputs="mean", core=xprop.FourthCore(summed=False))
    torch.testing.assert_close(result.mean, expected.mean, rtol=1e-12, atol=1e-14)
    with pytest.raises(mechest.MechestError, match="factored"):
        mechest.Scheme(3, "core")
    with pytest.raises(mechest.MechestError):
        mechest.Scheme(2, "core")


def test_refuses_what_it_does_not_do() -> None:
    net = net_of(8, 3, 2)
    with pytest.raises(ValueError, match="fourth_core_spec"):
        xprop.planned(torch_backend(net.device), layers_of(net), executor_spec(3, "simple", max_width=16),
                      core=xprop.FourthCore())
    with pytest.raises(ValueError, match="K = 3"):
        xprop.planned(torch_backend(net.device), layers_of(net), executor_spec(2, "augment", max_width=16),
                      core=xprop.FourthCore())


@pytest.mark.parametrize("outputs", ["mean", "cov", "marginals"])
def test_core_scheme_on_an_odd_network_matches_the_dense_engine(spec: dict, outputs: str) -> None:
    """Unequal widths (input 5, hidden 9, 7, 8, output 3), biases, and ReLU mixed with tanh: the scheme's setting
    (``FourthCore(summed=False)``) equals the dense engine on its plan."""
    net = odd_network(3)
    plan = fourth_core_plan(two=False, summed=False)
    dense = collect_propagation(net, input_tower(net.input_dim, plan, net.weights[0]), dense_towers(net, plan))
    result = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs,
                           core=xprop.FourthCore(summed=False))
    assert_matches_dense(result, dense, net, plan, outputs)
    scheme = mechest.kprop.propagate(net, mechest.Scheme(3, "core", factored=True), outputs)
    torch.testing.assert_close(scheme.mean, result.mean, rtol=0, atol=0)
    reference = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs=outputs)
    assert (reference.mean - dense.mean).abs().max() > 1e-8  # the option changes the estimate
