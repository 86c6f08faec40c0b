"""Mechanistic distillation: the joint network, the expected-loss estimate, its gradient, and the trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mechest.cli import main
from mechest.errors import MechestError
from mechest.estimators.distill import (
    attached,
    expected_loss,
    gaussian_activation_moments,
    init_student,
    joint_network,
    sampled_loss,
    squared_error_network,
)
from mechest.estimators.montecarlo import sample_moments
from mechest.experiments.training import (
    COSINE_FINAL_FRACTION,
    DistillConfig,
    distill,
    fit,
    lr_factor,
    mechanistic_objective,
)
from mechest.kprop import Scheme, propagate
from mechest.mlp import MLP, load, random_mlp


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
    for order, method in ((2, "kprop"), (3, "kprop"), (2, "mehler")):
        estimate = float(expected_loss(student, teacher, order, method=method).detach())
        assert abs(estimate - mean) < 5 * stderr, (order, method, estimate, mean, stderr)


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
    propagated = propagate(joint_network(student, teacher), Scheme(2))
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
    # mechest.math.wick's 100-node rule for tanh is accurate to a few 1e-9 at σ ≈ 1 (its docstring): allow 1e-8
    assert act_mean.tolist() == pytest.approx([m1, m2], abs=1e-8)
    assert float(act_cov[0, 0]) == pytest.approx((weight * np.tanh(z1) ** 2).sum() - m1**2, abs=1e-8)
    assert float(act_cov[0, 1]) == pytest.approx(cross, abs=1e-8)
    assert float(gaussian_activation_moments("tanh", mean, cov, terms=1)[1][0, 1]) != pytest.approx(cross, abs=1e-3)


@pytest.mark.parametrize("order, method", [(2, "kprop"), (3, "kprop"), (2, "mehler")])
def test_gradient_matches_finite_differences(order: int, method: str) -> None:
    student, teacher = pair(depth=2, teacher_width=3, student_width=2, activation="tanh")
    params = list(student.weights) + list(student.biases)

    def loss(*values: torch.Tensor) -> torch.Tensor:
        count = len(student.weights)
        net = MLP(list(values[:count]), list(values[count:]), student.activations)
        return expected_loss(net, teacher, order, method=method)

    assert torch.autograd.gradcheck(loss, tuple(params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_attached_sequential_receives_the_gradient() -> None:
    """A user's nn.Sequential student: the loss and its gradient equal those of the same MLP's leaf tensors."""
    student, teacher = pair(depth=2)
    model = student.to_sequential()
    loss = expected_loss(attached(model), teacher)
    loss.backward()
    reference = expected_loss(student, teacher)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-13, atol=0)
    torch.testing.assert_close(model[0].weight.grad, student.weights[0].grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model[4].bias.grad, student.biases[2].grad, rtol=1e-12, atol=1e-14)


def test_mehler_closure_is_zero_for_a_student_equal_to_its_teacher() -> None:
    """For φ = square the Mehler series ends at k = 2, so the Gaussian closure at every layer sees a copy of the
    teacher as perfectly correlated with it: estimate 0 (round-off). K = 2 propagation keeps only the k = 1 term
    of the inner student–teacher covariance and does not."""
    teacher = random_mlp(5, 3, "square", input_dim=4, output_dim=3, init="manual", weight_var=0.5, seed=1)
    scale = float(expected_loss(init_student(teacher, 5, seed=2), teacher, method="mehler").detach())
    assert abs(float(expected_loss(teacher, teacher, method="mehler"))) < 1e-12 * scale
    assert float(expected_loss(teacher, teacher, 2)) > 1e-3 * scale


def test_sampled_loss_is_mean_squared_error() -> None:
    student, teacher = pair(depth=1)
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = sum(float(((student(row[None]) - teacher(row[None])) ** 2).sum().detach()) for row in x) / 7
    assert float(sampled_loss(student, teacher, x).detach()) == pytest.approx(expected, rel=1e-12)


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
    with pytest.raises(MechestError, match="method"):
        expected_loss(init_student(teacher, 5), teacher, method="exact")


def test_mechanistic_training_beats_initialisation_and_reports_equal_flops(tmp_path) -> None:
    """A few Adam steps on the exact one-hidden-layer loss lower the held-out loss; the baseline spends at most
    the mechanistic FLOP budget, and less than one more minibatch step below it."""
    teacher = random_mlp(8, 1, input_dim=3, output_dim=2, seed=1)
    _, runs = distill(teacher, DistillConfig(width=4, steps=30, lr=0.05, log_every=10, test_samples=4096))
    mechanistic, ordinary = runs
    assert mechanistic.steps == [0, 10, 20, 30]
    assert mechanistic.true_loss[-1] < 0.5 * mechanistic.true_loss[0]
    assert ordinary.true_loss[0] == mechanistic.true_loss[0]  # same initial student, same held-out inputs
    budget = mechanistic.flops[-1]
    assert budget - ordinary.flops_per_step < ordinary.flops[-1] <= budget


def test_cosine_schedule_runs_from_the_initial_rate_to_one_percent_of_it() -> None:
    assert [lr_factor("constant", step, 10) for step in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0, 10) == pytest.approx(1.0, rel=1e-15)
    assert lr_factor("cosine", 5, 10) == pytest.approx((1 + COSINE_FINAL_FRACTION) / 2, rel=1e-15)
    assert lr_factor("cosine", 10, 10) == pytest.approx(COSINE_FINAL_FRACTION, rel=1e-15)
    factors = [lr_factor("cosine", step, 10) for step in range(11)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    with pytest.raises(MechestError, match="schedule"):
        lr_factor("step", 0, 10)


def test_fit_applies_the_schedule_to_adam(monkeypatch) -> None:
    """The rate Adam uses at each step is lr · lr_factor(schedule, step, steps)."""
    teacher = random_mlp(8, 1, input_dim=3, output_dim=2, seed=1)
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    objective = mechanistic_objective(teacher, 2)
    fit(init_student(teacher, 4), teacher, objective, 4, lr=0.1, label="cosine", log_every=4, test_samples=64,
        lr_schedule="cosine")
    assert seen == pytest.approx([0.1 * lr_factor("cosine", step, 4) for step in range(4)], rel=1e-12)


def test_distill_command_writes_student_plot_and_log(tmp_path) -> None:
    teacher_path, out = tmp_path / "teacher.npz", tmp_path / "student.npz"
    random_mlp(8, 2, input_dim=3, output_dim=2, seed=1).save(teacher_path)
    code = main(["distill", "--teacher", str(teacher_path), "--student-width", "4", "--steps", "4", "--log-every", "2",
                 "--test-samples", "512", "--out", str(out), "--plot", str(tmp_path / "loss.png"),
                 "--json", str(tmp_path / "log.json")])
    assert code == 0
    student = load(out)
    assert student.dims == [3, 4, 4, 2]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    runs = json.loads((tmp_path / "log.json").read_text())
    assert [run["steps"][-1] for run in runs][0] == 4 and len(runs) == 2


@pytest.mark.parametrize("arguments, message", [
    (["--student-width", "0"], "positive"),
    (["--student-width", "4", "--order", "1"], "K >= 2"),
    (["--student-width", "4", "--lr", "-1"], "learning rates"),
    (["--student-width", "4", "--teacher", "missing.npz"], "no such file"),
])
def test_distill_command_bad_input_is_one_line_error(tmp_path, capsys, arguments, message) -> None:
    teacher_path, out = tmp_path / "teacher.npz", tmp_path / "student.npz"
    random_mlp(8, 1, input_dim=3, output_dim=2, seed=1).save(teacher_path)
    code = main(["distill", "--teacher", str(teacher_path), "--steps", "2", "--out", str(out), *arguments])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not out.exists()
