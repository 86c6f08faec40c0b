"""The general propagation engine (K ≤ 4, simple and augment): exactness, agreement, Monte Carlo, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from mechest.estimators.estimate import estimate
from mechest.kprop import Scheme, engine, propagate, summed
from mechest.kprop.engine import propagate_general
from mechest.kprop.plan import Plan, compile_plan, reads_at_radial_index
from mechest.math.tensors.diagonal_slices import from_dense, symmetrize
from mechest.math.tensors.harmonic import project_slices
from mechest.mlp import MLP, random_mlp

HIGHER = [(order, variant) for order in (2, 3, 4) for variant in ("simple", "augment")]


def unit_chain(activations: list[str]) -> MLP:
    """A width-1 network with unit weights: z_0 = x, z_{l+1} = φ_l(z_l)."""
    one = torch.ones(1, 1, dtype=torch.float64)
    return MLP([one] * (len(activations) + 1), [None] * (len(activations) + 1), activations)


def test_general_engine_reproduces_the_executors_covariance_propagation() -> None:
    net = random_mlp(12, 3, "gelu", bias_mean=0.1, bias_var=0.05, seed=4)
    general, closed = propagate_general(net, 2, "simple"), propagate(net, Scheme(2))
    torch.testing.assert_close(general.mean, closed.mean, rtol=0, atol=1e-13)
    torch.testing.assert_close(general.cov, closed.cov, rtol=0, atol=1e-13)


@pytest.mark.parametrize("depth", [0, 2])
@pytest.mark.parametrize("order, variant", HIGHER)
def test_linear_network_is_exact(order: int, variant: str, depth: int) -> None:
    """Identity activations, rectangular layers (3 inputs, width 4, 2 outputs): mean and covariance exact."""
    net = random_mlp(4, depth, "identity", input_dim=3, output_dim=2, bias_mean=0.2, bias_var=0.1, seed=1)
    result = propagate(net, Scheme(order, variant))
    product, mean = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for weight, bias in zip(net.weights, net.biases):
        mean, product = weight @ mean + bias, weight @ product
    torch.testing.assert_close(result.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.cov, product @ product.T, rtol=0, atol=1e-12)
    if result.third is not None:
        assert float(result.third.abs().max()) < 1e-12


@pytest.mark.parametrize("activation", ["relu", "tanh", "heaviside", "square"])
@pytest.mark.parametrize("order, variant", HIGHER)
def test_one_hidden_layer_mean_equals_order_one(activation: str, order: int, variant: str) -> None:
    """With one hidden layer the pre-activations are exactly Gaussian and every order gives the exact mean;
    the exact value is tested against quadrature in test_kprop_gaussian for K = 1, 2."""
    net = random_mlp(5, 1, activation, bias_mean=0.2, bias_var=0.1, seed=7)
    torch.testing.assert_close(propagate(net, Scheme(order, variant)).mean, propagate(net, Scheme(1)).mean,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("order, variant", [(3, "simple"), (3, "augment"), (4, "simple"), (4, "augment"),
                                            (2, "augment")])
def test_square_then_cube_gives_the_sixth_moment(order: int, variant: str) -> None:
    """x → x² → (x²)³ at width 1: E[x⁶] = 15 exactly once κ_3 of x² and the (3) diagram are kept."""
    assert float(propagate(unit_chain(["square", "cube"]), Scheme(order, variant)).mean) == pytest.approx(15, abs=1e-12)


@pytest.mark.parametrize("order, variant", HIGHER)
def test_two_squarings_give_the_fourth_moment(order: int, variant: str) -> None:
    """x → x² → (x²)²: E[x⁴] = 3 = (2²−1)!!, exact at every K ≥ 2 (the mean and variance of x² suffice)."""
    assert float(propagate(unit_chain(["square", "square"]), Scheme(order, variant)).mean) == pytest.approx(
        3, abs=1e-12)


def test_k2_simple_at_width_one_misses_the_sixth_moment() -> None:
    """The test above can fail: without κ_3 of x² the chain x → x² → x⁶ is not exact."""
    assert abs(float(propagate(unit_chain(["square", "cube"]), Scheme(2, "simple")).mean) - 15) > 1


def product_statistics(centred: torch.Tensor, subscripts: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean of per-sample products of centred outputs, and its standard error std/√N."""
    operands = [centred] * (subscripts.count(",") + 1)
    products = torch.einsum(subscripts, *operands)
    return products.mean(dim=0), products.std(dim=0) / math.sqrt(centred.shape[0])


def test_nonlinear_step_matches_monte_carlo_at_small_width() -> None:
    """One ReLU layer on Gaussian input (n = 4): K = 4 augment's output covariance and third cumulant equal
    the sample cumulants of 4·10⁵ inputs within 5 standard errors (the truncation error is far below them).

    κ_2 = E[c_i c_j] and κ_3 = E[c_i c_j c_k] for the centred output c; centring with the sample mean changes
    them by O(1/N), negligible next to the standard errors of order 1/√N."""
    net = random_mlp(4, 1, "relu", bias_mean=0.1, seed=3)
    result = propagate(net, Scheme(4, "augment"))
    x = torch.randn(400_000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = net(x)
    centred = out - out.mean(dim=0)
    cov, cov_se = product_statistics(centred, "si,sj->sij")
    third, third_se = product_statistics(centred, "si,sj,sk->sijk")
    assert float(((result.cov - cov) / cov_se).abs().max()) < 5
    assert float(((result.third - third) / third_se).abs().max()) < 5
    # and the comparison has power: the Gaussian closure (no third cumulant) is rejected
    assert float((third / third_se).abs().max()) > 10


@pytest.mark.parametrize("order, variant", [(3, "simple"), (3, "augment"), (4, "simple")])
def test_gradients_match_finite_differences(order: int, variant: str) -> None:
    net = random_mlp(3, 2, "tanh", bias_mean=0.2, seed=0)
    weights = [w.clone().requires_grad_(True) for w in net.weights]

    def output_mean(*params: torch.Tensor) -> torch.Tensor:
        return propagate(MLP(list(params), net.biases, net.activations), Scheme(order, variant)).mean

    assert torch.autograd.gradcheck(output_mean, weights, eps=1e-6, atol=1e-7)


def test_orders_three_and_four_move_toward_monte_carlo_on_a_wide_net() -> None:
    """On a width-48 ReLU net with 3 hidden layers, K = 3 and 4 (simple) beat K = 2 against 4·10⁵ samples.

    Their errors are O(n^{-K}); at this width the K = 2 error is ~10x the Monte Carlo noise floor."""
    net = random_mlp(48, 3, "relu", seed=5)
    mc = estimate(net, "mc", samples=400_000, seed=1)
    floor = float((mc.stderr**2).mean())
    errors = {order: float(((propagate(net, Scheme(order)).mean - mc.mean) ** 2).mean()) - floor for order in (2, 3, 4)}
    assert errors[3] < errors[2] and errors[4] < errors[2]


def test_float32_run_is_close_to_float64() -> None:
    net = random_mlp(10, 3, "relu", seed=2)
    single = estimate(net, "kprop", order=3, dtype="float32")
    double = estimate(net, "kprop", order=3)
    assert single.mean.dtype == torch.float32
    torch.testing.assert_close(single.mean.double(), double.mean, rtol=0, atol=1e-4)


def test_plans_track_the_design_towers() -> None:
    """docs/method.md §4.2 towers: degree -> radial index."""
    expected = {
        (2, "simple"): {1: 0, 2: 0},
        (2, "augment"): {1: 0, 2: 0, 3: 1, 4: 2},
        (3, "simple"): {1: 0, 2: 0, 3: 0, 4: 2},
        (3, "augment"): {1: 0, 2: 0, 3: 0, 4: 1},
        (4, "simple"): {1: 0, 2: 0, 3: 0, 4: 0},
        (4, "augment"): {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 3},
    }
    for (order, variant), radial in expected.items():
        assert compile_plan(order, variant).radial == radial



def force_summed_slices(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Evaluate summed slices (mechest.kprop.summed) whatever the width, so small nets exercise that path;
    returns the list of slices the engine evaluated that way, one entry per layer."""
    used: list[tuple] = []

    def split(plan: Plan, width: int) -> tuple[Plan, tuple]:
        dense_plan, slices = summed.split_summed(plan, width, 0)
        used.append(slices)
        return dense_plan, slices

    monkeypatch.setattr(engine, "split_summed", split)
    return used


@pytest.mark.parametrize("order", [3, 4])
def test_summed_slices_give_the_dense_result(order: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """K = 3 / 4 AUGMENT with the (2, 1, …, 1) slice evaluated as its capped sum equals forming the slice."""
    net = random_mlp(5, 3, "gelu", input_dim=4, bias_mean=0.1, bias_var=0.05, seed=3)
    plan = compile_plan(order, "augment")
    assert summed.split_summed(plan, 5)[1] == ()  # below MIN_WIDTH: formed densely
    assert summed.split_summed(plan, 5, 0)[1] == ((2,) + (1,) * (order - 1),)
    dense = propagate_general(net, order, "augment")
    used = force_summed_slices(monkeypatch)
    with_sums = propagate_general(net, order, "augment")
    assert used == [((2,) + (1,) * (order - 1),)] * 3
    torch.testing.assert_close(with_sums.mean, dense.mean, rtol=0, atol=1e-13)
    torch.testing.assert_close(with_sums.cov, dense.cov, rtol=0, atol=1e-13)
    for ours, theirs in zip(with_sums.layer_means, dense.layer_means, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13)


def test_summed_slices_are_differentiable(monkeypatch: pytest.MonkeyPatch) -> None:
    used = force_summed_slices(monkeypatch)
    net = random_mlp(3, 2, "tanh", bias_mean=0.2, seed=0)
    weights = [w.clone().requires_grad_(True) for w in net.weights]

    def output_mean(*params: torch.Tensor) -> torch.Tensor:
        return propagate_general(MLP(list(params), net.biases, net.activations), 3, "augment").mean

    assert torch.autograd.gradcheck(output_mean, weights, eps=1e-6, atol=1e-7)
    assert used and all(slices == ((2, 1, 1),) for slices in used)


@pytest.mark.parametrize("degree, r", [(4, 2), (5, 1), (6, 3), (4, 1)])
def test_projection_reads_only_the_slices_the_plan_computes(degree: int, r: int) -> None:
    """Slices with Σ_b ⌊p_b/2⌋ < r (never formed by the engine) do not change P_{≥r} T."""
    generator = torch.Generator().manual_seed(degree + 7 * r)
    tensor = symmetrize(torch.randn((4,) * degree, generator=generator, dtype=torch.float64))
    slices = from_dense(tensor)
    read = {p: s for p, s in slices.items() if reads_at_radial_index(p, r)}
    assert len(read) < len(slices)
    torch.testing.assert_close(project_slices(read, 4, degree, r).core, project_slices(slices, 4, degree, r).core,
                               rtol=0, atol=1e-12)
