"""Orders K = 1 and 2: closed forms at one hidden layer, Monte Carlo agreement, gradients, FLOP counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from mechest.errors import MechestError
from mechest.estimators.estimate import estimate
from mechest.flops import FlopCounter
from mechest.kprop import Scheme, propagate
from mechest.kprop.executor import relu_wick_terms
from mechest.math.wick import ACTIVATION_NAMES, activation_function
from mechest.mlp import MLP, random_mlp

NON_SMOOTH_POINTS = [0.0]


def gaussian_expectation(function, mean: float, std: float) -> float:
    """E[f(Z)], Z ~ N(mean, std²), by adaptive quadrature (split at 0 where the activations have kinks)."""
    def integrand(z: float) -> float:
        value = function(torch.tensor(z, dtype=torch.float64)).item()
        return value * math.exp(-((z - mean) / std) ** 2 / 2) / (std * math.sqrt(2 * math.pi))

    lo, hi = mean - 14 * std, mean + 14 * std
    points = [p for p in NON_SMOOTH_POINTS if lo < p < hi]
    return integrate.quad(integrand, lo, hi, points=points or None, epsabs=1e-12, epsrel=1e-12, limit=400)[0]


def one_hidden_layer_mean(net: MLP) -> np.ndarray:
    """Closed form of the output mean with one hidden layer: the hidden pre-activations are N(b_0, ‖W_0 row‖²)."""
    function = activation_function(net.activations[0])
    mu = np.zeros(net.weights[0].shape[0]) if net.biases[0] is None else net.biases[0].numpy()
    std = net.weights[0].norm(dim=1).numpy()
    hidden = np.array([gaussian_expectation(function, m, s) for m, s in zip(mu, std)])
    out = net.weights[1].numpy() @ hidden
    return out if net.biases[1] is None else out + net.biases[1].numpy()


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("order", [1, 2])
def test_one_hidden_layer_mean_is_exact(activation: str, order: int) -> None:
    net = random_mlp(6, 1, activation, bias_mean=0.15, bias_var=0.04, seed=11)
    estimated = propagate(net, Scheme(order)).mean.numpy()
    np.testing.assert_allclose(estimated, one_hidden_layer_mean(net), rtol=0, atol=1e-10)


def test_linear_network_is_exact_in_mean_and_covariance() -> None:
    net = random_mlp(5, 3, "identity", bias_mean=0.3, bias_var=0.1, seed=2)
    result = propagate(net, Scheme(2))
    mean = torch.zeros(5, dtype=torch.float64)
    product = torch.eye(5, dtype=torch.float64)
    for weight, bias in zip(net.weights, net.biases):
        mean = weight @ mean + bias
        product = weight @ product
    torch.testing.assert_close(result.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.cov, product @ product.T, rtol=1e-12, atol=1e-12)


def test_order_two_covariance_matches_monte_carlo_after_one_hidden_layer_up_to_hermite_truncation() -> None:
    """Cov(a_i, a_j) = w_i(1,1) w_j(1,1) Σ_ij is the first Hermite term; for weakly correlated rows it is
    accurate to O(Σ_ij²), and the diagonal Var(a_i) is exact."""
    net = random_mlp(64, 1, "tanh", seed=0)
    result = propagate(net, Scheme(2))
    x = torch.randn(400_000, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hidden = torch.tanh(x @ net.weights[0].T)
    sample_var = hidden.var(dim=0)
    standard_error = sample_var * math.sqrt(2 / x.shape[0]) * 2  # kurtosis of tanh(z)² is below 3
    z = (torch.diagonal(result.layer_covs[0]) - sample_var) / standard_error
    assert float(z.abs().max()) < 5


@pytest.mark.parametrize("order", [1, 2])
def test_gradients_match_finite_differences(order: int) -> None:
    net = random_mlp(3, 2, "gelu", bias_mean=0.1, seed=0)
    weights = [w.clone().requires_grad_(True) for w in net.weights]

    def output_mean(*params: torch.Tensor) -> torch.Tensor:
        return propagate(MLP(list(params), net.biases, net.activations), Scheme(order)).mean

    assert torch.autograd.gradcheck(output_mean, weights, eps=1e-6, atol=1e-7)


def test_order_two_flops_counted_match_hand_formula_for_matrix_products() -> None:
    """K = 2 spends 2n³ (W Wᵀ; the input's zero mean is not multiplied through W) on the first layer and
    2n² (mean) + 4n³ (W Σ Wᵀ) on every later one, plus per layer the ReLU Wick table's product of its constant
    coefficients (one row per (k, p)) with the n neurons' monomials."""
    n, depth = 20, 3

    def wick_products(k_max: int, p_max: int) -> int:
        matrix = relu_wick_terms(k_max, p_max)[2]
        return 2 * len(matrix) * len(matrix[0]) * n

    net = random_mlp(n, depth, "relu", seed=0)
    with FlopCounter() as counter:
        propagate(net, Scheme(2))
    products = counter.by_operation["mm"] + counter.by_operation["mv"]
    assert products == 2 * n**3 + depth * (2 * n**2 + 4 * n**3 + wick_products(1, 2))
    # everything else is elementwise work on n × n matrices and vectors: O(n²) per layer
    assert counter.total - products < 40 * n**2 * (depth + 1)
    assert estimate(net, "kprop", order=2, cov=True).flops == counter.total
    # the mean alone skips the output's W Σ Wᵀ (4n³) and reads only diag(W Σ Wᵀ) = Σ_j (W Σ)_ij W_ij on the last
    # hidden layer (2n³ instead of 4n³): 6n³ less, and its Wick table needs only E[φ] (k = 0, p ≤ 1)
    with FlopCounter() as mean_only:
        propagate(net, Scheme(2), "mean")
    assert estimate(net, "kprop", order=2).flops == mean_only.total
    assert counter.by_operation["mm"] - mean_only.by_operation["mm"] == 6 * n**3 + wick_products(1, 2) - wick_products(
        0, 1)


def test_order_one_costs_order_n_squared() -> None:
    n, depth = 30, 4
    with FlopCounter() as counter:
        propagate(random_mlp(n, depth, seed=0), Scheme(1))
    assert counter.by_operation["mv"] == depth * 2 * n**2  # W μ per map but the first (the input mean is 0)
    # besides, per hidden layer the Wick table's product with the neurons' monomials: O(n), 2·rows·columns·n
    matrix = relu_wick_terms(0, 2)[2]
    assert counter.by_operation["mm"] == depth * 2 * len(matrix) * len(matrix[0]) * n
    assert counter.total - counter.by_operation["mm"] < 10 * n**2 * (depth + 1)


def test_float32_is_offered_and_close() -> None:
    net = random_mlp(16, 3, seed=0)
    single = estimate(net, "kprop", order=2, dtype="float32")
    double = estimate(net, "kprop", order=2)
    assert single.mean.dtype == torch.float32
    torch.testing.assert_close(single.mean.double(), double.mean, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"order": 0}, "order"), ({"order": 5}, "order"), ({"variant": "fancy"}, "variant"),
    ({"dtype": "float16"}, "dtype"),
])
def test_bad_kprop_options(kwargs, message) -> None:
    with pytest.raises(MechestError, match=message):
        estimate(random_mlp(3, 1), "kprop", **kwargs)


def test_unknown_method() -> None:
    with pytest.raises(MechestError, match="method"):
        estimate(random_mlp(3, 1), "sampling")


def with_equal_row_norms(net: MLP) -> MLP:
    """``net`` with every weight row rescaled to the norm of the matrix's first row."""
    weights = [w / w.norm(dim=1, keepdim=True) * w[0].norm() for w in net.weights]
    return MLP(weights, net.biases, net.activations)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "square"])
def test_isotropic_equals_mean_field_when_all_rows_have_equal_norms(activation: str) -> None:
    # The isotropic variant replaces each row's squared norm by the mean over sampled rows: with equal
    # norms (widths above ISOTROPIC_TRACE_ROWS, so rows are really sampled) it must reproduce K = 1 exactly.
    net = with_equal_row_norms(random_mlp(20, 3, activation, bias_mean=0.1, bias_var=0.02, seed=4))
    isotropic, mean_field = propagate(net, Scheme(1, "isotropic")), propagate(net, Scheme(1, "simple"))
    torch.testing.assert_close(isotropic.mean, mean_field.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(isotropic.cov, mean_field.cov, rtol=1e-12, atol=1e-12)


def test_isotropic_differs_from_mean_field_when_row_norms_differ() -> None:
    net = random_mlp(20, 3, "relu", seed=4)
    assert not torch.allclose(propagate(net, Scheme(1, "isotropic")).mean, propagate(net, Scheme(1, "simple")).mean,
                              atol=1e-6)


def test_isotropic_one_hidden_layer_is_exact_with_equal_row_norms() -> None:
    net = with_equal_row_norms(random_mlp(12, 1, "relu", bias_mean=0.15, bias_var=0.04, seed=11))
    np.testing.assert_allclose(propagate(net, Scheme(1, "isotropic")).mean.numpy(), one_hidden_layer_mean(net),
                               rtol=0, atol=1e-10)


def test_mean_squared_row_norm_reads_evenly_spaced_rows() -> None:
    from mechest.kprop.executor import ISOTROPIC_TRACE_ROWS, squared_row_norms

    assert ISOTROPIC_TRACE_ROWS == 8
    weight = torch.arange(1.0, 33.0, dtype=torch.float64)[:, None] * torch.ones(1, 3, dtype=torch.float64)
    rows = torch.arange(1.0, 33.0, 4, dtype=torch.float64)  # rows 0, 4, ..., 28 hold 1, 5, ..., 29
    estimated = squared_row_norms(torch, weight, isotropic=True)
    assert estimated.shape == (32,) and bool((estimated == estimated[0]).all())
    assert estimated[0].item() == pytest.approx((3 * rows**2).mean().item(), rel=1e-15)
    small = weight[:5]
    assert squared_row_norms(torch, small, isotropic=True)[0].item() == pytest.approx(
        (small**2).sum().item() / 5, rel=1e-15)


def test_isotropic_costs_less_than_one_forward_pass_and_mean_field_more() -> None:
    # Matrix-vector products of layers 1..L (layer 0 multiplies the zero input mean: skipped) plus ~80 FLOPs
    # per neuron for the Gaussian integrals: under one forward pass once the width is over ~150.
    net = random_mlp(256, 2, "relu", seed=0)
    counted = {}
    for variant in ("simple", "isotropic"):
        with FlopCounter() as counter:
            propagate(net, Scheme(1, variant))
        counted[variant] = counter.total
    assert counted["isotropic"] < net.flops_per_sample() < counted["simple"]


def test_isotropic_exists_at_order_one_only() -> None:
    with pytest.raises(MechestError, match="order 1 only"):
        propagate(random_mlp(4, 2, "relu", seed=0), Scheme(2, "isotropic"))


def test_isotropic_beats_monte_carlo_at_equal_flops_by_over_100x() -> None:
    # He-init ReLU, width 128, 3 hidden layers, against 2e5 samples (noise floor Var/2e5 subtracted): Monte
    # Carlo at the isotropic estimate's FLOPs has MSE/Var = forward FLOPs / its FLOPs (about 1); the isotropic
    # estimate must be over 100x below that (measured: MSE/Var 5.5e-3, K = 1 1.8e-3).
    net = random_mlp(128, 3, "relu", seed=3)
    sampled = estimate(net, "mc", samples=200_000, seed=7)
    var = sampled.variance.mean().item()
    isotropic = estimate(net, "kprop", order=1, variant="isotropic")
    relative = (((isotropic.mean - sampled.mean) ** 2).mean().item() - var / 200_000) / var
    monte_carlo_at_equal_flops = net.flops_per_sample() / isotropic.flops
    assert 0 < relative < monte_carlo_at_equal_flops / 100
