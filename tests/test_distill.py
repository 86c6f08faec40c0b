"""Mechanistic distillation: the joint network, the expected-loss estimate, its gradient, and the trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechest.distill import (
    expected_loss,
    gaussian_activation_moments,
    init_student,
    joint_network,
    sampled_loss,
    squared_error_network,
)
from mechest.errors import MechestError
from mechest.kprop import propagate
from mechest.mlp import MLP, random_mlp
from mechest.montecarlo import sample_moments


def pair(depth: int, activation: str = "relu", teacher_width: int = 6, student_width: int = 5) -> tuple[MLP, MLP]:
    """A small teacher with biases and a He-init student of another width (input 4, output 3)."""
    teacher = random_mlp(teacher_width, depth, activation, input_dim=4, output_dim=3, bias_var=0.1, seed=1)
    return init_student(teacher, student_width, seed=2), teacher


def monte_carlo_loss(student: MLP, teacher: MLP, samples: int, seed: int) -> tuple[float, float]:
    """Sample mean of ‖S(x) − T(x)‖² and its standard error."""
    moments = sample_moments(squared_error_network(student, teacher), samples, seed=seed, chunk_size=1 << 20)
    return float(moments.mean[0]), float((moments.variance[0] / moments.count).sqrt())


def test_joint_network_computes_student_minus_teacher() -> None:
    student, teacher = pair(depth=2)
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    joint = joint_network(student, teacher)
    assert joint.dims == [4, 11, 11, 3]
    torch.testing.assert_close(joint(x), student(x) - teacher(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(squared_error_network(student, teacher)(x)[:, 0],
                               ((student(x) - teacher(x)) ** 2).sum(dim=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_one_hidden_layer_matches_monte_carlo(activation: str) -> None:
    """Exact for one hidden layer: within 5 standard errors of 10^6 samples (about 1e-3 relative)."""
    student, teacher = pair(depth=1, activation=activation)
    mean, stderr = monte_carlo_loss(student, teacher, 10**6, seed=3)
    for order in (2, 3):
        estimate = float(expected_loss(student, teacher, order).detach())
        assert abs(estimate - mean) < 5 * stderr, (order, estimate, mean, stderr)


@pytest.mark.slow
def test_one_hidden_layer_matches_ten_million_samples() -> None:
    """The issue's acceptance test: 10^7 samples, within 5 standard errors (about 4e-4 relative)."""
    student, teacher = pair(depth=1)
    mean, stderr = monte_carlo_loss(student, teacher, 10**7, seed=4)
    estimate = float(expected_loss(student, teacher, 2).detach())
    assert abs(estimate - mean) < 5 * stderr, (estimate, mean, stderr)


def test_first_hermite_term_alone_is_covariance_propagation() -> None:
    """hermite_terms=1 keeps only Cov = w(1,1) w(1,1) Σ off the diagonal: K = 2 propagation of the joint net."""
    student, teacher = pair(depth=3, activation="tanh")
    propagated = propagate(joint_network(student, teacher), 2)
    direct = propagated.mean @ propagated.mean + torch.trace(propagated.cov)
    torch.testing.assert_close(expected_loss(student, teacher, 2, hermite_terms=1), direct, rtol=1e-12, atol=0)


def test_mehler_series_matches_bivariate_quadrature() -> None:
    """Cov(tanh(z_1), tanh(z_2)) for correlated Gaussians (ρ = 0.51) against an 80² Gauss–Hermite product rule."""
    mean = torch.tensor([0.3, -0.2], dtype=torch.float64)
    cov = torch.tensor([[1.2, 0.5], [0.5, 0.8]], dtype=torch.float64)
    act_mean, act_cov = gaussian_activation_moments("tanh", mean, cov)
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / math.sqrt(2 * math.pi)
    chol = np.linalg.cholesky(cov.numpy())
    u, v = np.meshgrid(x, x, indexing="ij")
    z1 = mean[0].item() + chol[0, 0] * u
    z2 = mean[1].item() + chol[1, 0] * u + chol[1, 1] * v
    weight = np.outer(w, w)
    m1, m2 = (weight * np.tanh(z1)).sum(), (weight * np.tanh(z2)).sum()
    cross = (weight * np.tanh(z1) * np.tanh(z2)).sum() - m1 * m2
    # mechest.wick's 100-node rule for tanh is accurate to a few 1e-9 at σ ≈ 1 (its docstring): allow 1e-8
    assert act_mean.tolist() == pytest.approx([m1, m2], abs=1e-8)
    assert float(act_cov[0, 0]) == pytest.approx((weight * np.tanh(z1) ** 2).sum() - m1**2, abs=1e-8)
    assert float(act_cov[0, 1]) == pytest.approx(cross, abs=1e-8)
    assert float(gaussian_activation_moments("tanh", mean, cov, terms=1)[1][0, 1]) != pytest.approx(cross, abs=1e-3)


@pytest.mark.parametrize("order", [2, 3])
def test_gradient_matches_finite_differences(order: int) -> None:
    student, teacher = pair(depth=2, teacher_width=3, student_width=2, activation="tanh")
    params = list(student.weights) + list(student.biases)

    def loss(*values: torch.Tensor) -> torch.Tensor:
        count = len(student.weights)
        net = MLP(list(values[:count]), list(values[count:]), student.activations)
        return expected_loss(net, teacher, order)

    assert torch.autograd.gradcheck(loss, tuple(params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_sampled_loss_is_mean_squared_error() -> None:
    student, teacher = pair(depth=1)
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = sum(float(((student(row[None]) - teacher(row[None])) ** 2).sum().detach()) for row in x) / 7
    assert float(sampled_loss(student, teacher, x)) == pytest.approx(expected, rel=1e-12)


def test_zero_hidden_layers_is_closed_form() -> None:
    """S − T linear: E‖(W_S − W_T) x + b_S − b_T‖² = ‖W_S − W_T‖_F² + ‖b_S − b_T‖²."""
    teacher = random_mlp(3, 0, input_dim=4, output_dim=3, bias_var=1.0, seed=1)
    student = init_student(teacher, 3, seed=2)
    bias_t = teacher.biases[0]
    expected = ((student.weights[0] - teacher.weights[0]) ** 2).sum() + (bias_t**2).sum()
    torch.testing.assert_close(expected_loss(student, teacher), expected)


def test_mismatched_networks_are_refused() -> None:
    teacher = random_mlp(6, 2, input_dim=4, output_dim=3, seed=1)
    with pytest.raises(MechestError, match="hidden layers"):
        expected_loss(init_student(random_mlp(6, 1, input_dim=4, output_dim=3), 5), teacher)
    with pytest.raises(MechestError, match="output dims"):
        expected_loss(init_student(random_mlp(6, 2, input_dim=4, output_dim=2), 5), teacher)
    with pytest.raises(MechestError, match="activations"):
        expected_loss(init_student(random_mlp(6, 2, "tanh", input_dim=4, output_dim=3), 5), teacher)
    with pytest.raises(MechestError, match="order"):
        expected_loss(init_student(teacher, 5), teacher, order=1)
