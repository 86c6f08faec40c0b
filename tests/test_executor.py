"""The executor (mechest.kprop.executor) on every network mechest accepts, against the unfactorised engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechest.estimators.tail import dense_marginals
from mechest.kprop import Scheme, propagate
from mechest.kprop.engine import propagate_general
from mechest.kprop.executor import Backend, Layers, planned
from mechest.kprop.plan import compile_plan
from mechest.kprop.run import executor_cumulants, executor_plan
from mechest.mlp import MLP

scipy_special = pytest.importorskip("scipy.special")
TOLERANCE = 1e-10


def odd_network(widths: list[int], activations: list[str], seed: int, dtype: torch.dtype = torch.float64) -> MLP:
    """Non-square widths (input ≠ output), biases on every other layer, one activation per hidden layer."""
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out, inp, generator=generator, dtype=dtype) * (1.6 / inp) ** 0.5
               for inp, out in zip(widths[:-1], widths[1:])]
    biases = [0.2 * torch.randn(out, generator=generator, dtype=dtype) if layer % 2 == 0 else None
              for layer, out in enumerate(widths[1:])]
    return MLP(weights, biases, activations)


NETWORKS = {
    "relu-widths-differ": odd_network([5, 9, 7, 11, 3], ["relu"] * 3, seed=0),
    "mixed-activations": odd_network([6, 8, 8, 4], ["tanh", "gelu"], seed=1),
    "one-hidden-layer": odd_network([3, 10, 2], ["sigmoid"], seed=2),
    "abs-and-relu": odd_network([4, 6, 5, 6, 1], ["abs", "relu", "relu"], seed=3),
}
EXECUTOR = [(Scheme(1), (1, "simple")), (Scheme(2), (2, "simple")), (Scheme(2, "augment"), (2, "augment")),
            (Scheme(3, "simple", True), (3, "simple"))]
WITHOUT_ORACLE = [Scheme(3, "core", True), Scheme(3, "closure", True)]
"""Executor schemes with no dense engine to compare with (tests/test_augment_cheap.py, tests/test_closure.py)."""


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(("scheme", "oracle"), EXECUTOR, ids=[str(s) for s, _ in EXECUTOR])
def test_executor_equals_the_unfactorised_engine(name: str, scheme: Scheme, oracle: tuple) -> None:
    net = NETWORKS[name]
    got, expected = propagate(net, scheme), propagate_general(net, *oracle)
    # K = 1 keeps the covariance as its trace part c·I and reads only the diagonal of c·W Wᵀ at the output
    read = torch.diag if scheme.order == 1 else (lambda matrix: matrix)
    torch.testing.assert_close(got.mean, expected.mean, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(read(got.cov), read(expected.cov), rtol=0, atol=TOLERANCE)
    for mine, theirs in zip(got.layer_means, expected.layer_means, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=TOLERANCE)
    for mine, theirs in zip(got.layer_covs, expected.layer_covs, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(("scheme", "oracle"), EXECUTOR[1:], ids=[str(s) for s, _ in EXECUTOR[1:]])
def test_output_levels_agree_and_marginals_equal_the_dense_ones(name: str, scheme: Scheme, oracle: tuple) -> None:
    net = NETWORKS[name]
    mean_only, with_cov, marginals = (executor_cumulants(net, scheme, outputs) for outputs in
                                      ("mean", "cov", "marginals"))
    assert mean_only.cov is None and with_cov.third_diagonal is None
    for result in (with_cov, marginals):
        torch.testing.assert_close(result.mean, mean_only.mean, rtol=0, atol=TOLERANCE)
    dense = dense_marginals(net, compile_plan(*oracle))
    torch.testing.assert_close(torch.diagonal(marginals.cov), dense[1], rtol=0, atol=TOLERANCE)
    for tracked, untracked_or_dense in ((marginals.third_diagonal, dense[2]), (marginals.fourth_diagonal, dense[3])):
        if tracked is None:  # the scheme does not carry that cumulant: the dense engine's slice is 0 too
            assert bool((untracked_or_dense == 0).all())
        else:
            torch.testing.assert_close(tracked, untracked_or_dense, rtol=0, atol=TOLERANCE)


def test_widths_that_differ_keep_one_source_stack_per_width() -> None:
    """Hidden widths 9, 7, 11: the sources made at each layer have 9, 7 and 11 columns, so three stacks; the result
    equals the dense engine (above) and does not depend on how the stacks are grouped."""
    net = NETWORKS["relu-widths-differ"]
    result = executor_cumulants(net, Scheme(3, "simple", True), "marginals")
    assert result.third_diagonal.shape == (3,)
    assert bool((result.third_diagonal.abs() > 1e-6).all())  # κ_3 really is carried to the output


@pytest.mark.parametrize("variant", ["simple", "closure"])
def test_gradients_of_the_factored_k3_mean_match_finite_differences(variant: str) -> None:
    net = odd_network([3, 5, 4, 2], ["relu", "tanh"], seed=4)
    weights = [w.clone().requires_grad_(True) for w in net.weights]

    def output_mean(*params: torch.Tensor) -> torch.Tensor:
        return propagate(MLP(list(params), net.biases, net.activations), Scheme(3, variant, True), "mean").mean

    assert torch.autograd.gradcheck(output_mean, weights, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("scheme", [s for s, _ in EXECUTOR] + WITHOUT_ORACLE, ids=str)
def test_float32_agrees_with_float64(scheme: Scheme) -> None:
    net = NETWORKS["relu-widths-differ"]
    single = propagate(net.to(dtype=torch.float32), scheme)
    assert single.mean.dtype == torch.float32
    torch.testing.assert_close(single.mean.double(), propagate(net, scheme).mean, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme", [Scheme(2, "augment"), Scheme(3, "simple", True)], ids=str)
def test_numpy_runs_the_same_code_on_a_network_with_biases_and_widths_that_differ(scheme: Scheme) -> None:
    net = NETWORKS["relu-widths-differ"]
    layers = Layers([w.numpy() for w in net.weights], [None if b is None else b.numpy() for b in net.biases],
                    net.activations)
    spec = executor_plan(scheme, 11)
    got = planned(Backend(np, scipy_special.ndtr), layers, spec, outputs="cov")
    expected = propagate(net, scheme)
    np.testing.assert_allclose(got.mean, expected.mean.numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got.cov, expected.cov.numpy(), rtol=0, atol=TOLERANCE)


def test_the_numpy_backend_without_a_wick_table_refuses_other_activations() -> None:
    net = NETWORKS["mixed-activations"]
    layers = Layers([w.numpy() for w in net.weights], [None] * 3, net.activations)
    with pytest.raises(ValueError, match="only relu is built in"):
        planned(Backend(np, scipy_special.ndtr), layers, executor_plan(Scheme(2, "augment"), 8))


@pytest.mark.parametrize("scheme", [s for s, _ in EXECUTOR] + WITHOUT_ORACLE, ids=str)
@pytest.mark.parametrize("outputs", ["mean", "cov", "marginals"])
def test_a_network_without_hidden_layers_is_its_linear_map(scheme: Scheme, outputs: str) -> None:
    net = odd_network([4, 3], [], seed=5)
    result = executor_cumulants(net, scheme, outputs)
    torch.testing.assert_close(result.mean, net.biases[0], rtol=0, atol=TOLERANCE)
    if outputs != "mean" and scheme.order > 1:
        torch.testing.assert_close(result.cov, net.weights[0] @ net.weights[0].T, rtol=0, atol=TOLERANCE)
