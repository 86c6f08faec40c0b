"""Mechanistic distillation: fit a student S_θ to a teacher T under x ~ N(0, I) without sampling inputs.

The loss is L(θ) = E_x ‖S_θ(x) − T(x)‖². Teacher and student run side by side on the same input as one
*joint* network J(x) = S(x) − T(x): its first linear map stacks both first maps, its hidden maps are
block-diagonal, and its last map is [W_S_out, −W_T_out] with bias b_S − b_T. Then

    L = E‖J‖² = ‖E J‖² + tr Cov J,

and E J, Cov J come from cumulant propagation, which is differentiable in θ.

``expected_loss`` propagates the joint network's cumulants to order K up to the last hidden layer's
pre-activations z (mean μ, covariance Σ), then takes the last nonlinear step exactly for Gaussian z: with
ρ_ij = Σ_ij / (σ_i σ_j) and c_k(i) = σ_i^k E[φ^(k)(z_i)] / √k!, Mehler's expansion gives

    Cov(φ(z_i), φ(z_j)) = Σ_{k≥1} ρ_ij^k c_k(i) c_k(j)   (i ≠ j),   Var φ(z_i) = w_i(0, 2) − w_i(0, 1)²,

summed to HERMITE_TERMS terms. With one hidden layer z is exactly Gaussian, so the estimate is exact up to
that truncation (whose tail is at most |ρ_ij|^(k+1) times the unexplained variances). K = 2 covariance
propagation alone keeps only the k = 1 term; ``hermite_terms=1`` reproduces it.

``hermite_tail=True`` adds the truncated tail as ρ_ij^(K+1)·sqrt(r_i r_j), r_i = Var φ(z_i) − Σ_{k≤K} c_k(i)²
the variance the K terms leave unexplained: exact at ρ_ij = 1 for units with proportional coefficients (a unit
and its copy), so a student equal to its teacher gets ≈ 0 instead of the 24-term truncation's Σ_i 2 r_i (0.7%
of tr Cov T for a width-64, 3-hidden-layer ReLU net), and by Cauchy–Schwarz never off by more than
|ρ_ij|^(K+1)·2·sqrt(r_i r_j) per pair. Nearly equal networks (``mechest.experiments.suppress``) need it.

``method="mehler"`` instead takes *every* nonlinear step that way (the Gaussian closure with exact bivariate
moments: each layer's pre-activations treated as jointly Gaussian with the propagated mean and covariance).
It costs what K = 2 costs, and unlike K = 2 it keeps the full correlation between a student unit and a
teacher unit, so a student equal to the teacher gets an estimate near 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mechest.errors import MechestError
from mechest.kprop import Scheme, propagate
from mechest.math.wick import MIN_VARIANCE, wick_table
from mechest.mlp import MLP, from_sequential, random_mlp

HERMITE_TERMS = 24
METHODS = ("kprop", "mehler")


def check_pair(student: MLP, teacher: MLP) -> None:
    """Raise a one-line MechestError unless student and teacher can run side by side."""
    if (student.input_dim, student.output_dim) != (teacher.input_dim, teacher.output_dim):
        raise MechestError(
            f"student maps {student.input_dim} → {student.output_dim} dims but teacher maps "
            f"{teacher.input_dim} → {teacher.output_dim}: they need the same input and output dims"
        )
    if student.depth != teacher.depth:
        raise MechestError(f"student has {student.depth} hidden layers, teacher {teacher.depth}: "
                           "mechanistic distillation needs equal depths")
    if student.activations != teacher.activations:
        raise MechestError(f"student activations {student.activations} differ from the teacher's {teacher.activations}")
    if student.dtype != teacher.dtype:
        raise MechestError(f"student is {student.dtype} but teacher is {teacher.dtype}")


def _bias(net: MLP, layer: int) -> torch.Tensor:
    """Layer ``layer``'s bias, zeros where the network has none."""
    bias = net.biases[layer]
    if bias is not None:
        return bias
    return torch.zeros(net.weights[layer].shape[0], dtype=net.dtype, device=net.device)


def joint_network(student: MLP, teacher: MLP) -> MLP:
    """The network x ↦ S(x) − T(x), hidden layers [student units; teacher units]; differentiable in the student."""
    check_pair(student, teacher)
    last = student.depth
    weights, biases = [], []
    for layer in range(last):
        if layer == 0:
            weights.append(torch.cat([student.weights[0], teacher.weights[0]], dim=0))
        else:
            weights.append(torch.block_diag(student.weights[layer], teacher.weights[layer]))
        biases.append(torch.cat([_bias(student, layer), _bias(teacher, layer)]))
    if last == 0:
        weights.append(student.weights[0] - teacher.weights[0])
    else:
        weights.append(torch.cat([student.weights[last], -teacher.weights[last]], dim=1))
    biases.append(_bias(student, last) - _bias(teacher, last))
    return MLP(weights, biases, list(student.activations))


def squared_error_network(student: MLP, teacher: MLP) -> MLP:
    """The network x ↦ ‖S(x) − T(x)‖²: the joint network, a square layer, and a sum (for Monte Carlo)."""
    joint = joint_network(student, teacher)
    ones = torch.ones(1, joint.output_dim, dtype=joint.dtype, device=joint.device)
    return MLP(joint.weights + [ones], joint.biases + [None], joint.activations + ["square"])


def gaussian_activation_moments(
    activation: str, mean: torch.Tensor, cov: torch.Tensor, terms: int = HERMITE_TERMS, tail: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of φ(z) for z ~ N(mean, cov): exact diagonal, Mehler series to ``terms`` off it
    (plus the tail estimate ρ^(terms+1)·sqrt(r_i r_j) of the module docstring if ``tail``).

    Computed in float64 (σ_i^k overflows float32 for small σ) and returned in the input's dtype.
    """
    if terms < 1:
        raise MechestError(f"hermite_terms must be at least 1, got {terms}")
    dtype = mean.dtype
    mean, cov = mean.to(torch.float64), cov.to(torch.float64)
    var = torch.diagonal(cov)
    table = wick_table(activation, mean, var, k_max=terms, p_max=2)
    std = var.clamp_min(MIN_VARIANCE).sqrt()
    rho = cov / (std[:, None] * std[None, :])
    out_mean = table[0, 1]
    out_cov = torch.zeros_like(cov)
    rho_power = torch.ones_like(rho)
    explained = torch.zeros_like(var)
    for k in range(1, terms + 1):
        rho_power = rho_power * rho
        c_k = table[k, 1] * std**k / math.sqrt(math.factorial(k))
        out_cov = out_cov + c_k[:, None] * rho_power * c_k[None, :]
        explained = explained + c_k * c_k
    diagonal = table[0, 2] - out_mean * out_mean
    if tail:
        unexplained = (diagonal - explained).clamp_min(MIN_VARIANCE**2).sqrt()
        out_cov = out_cov + rho_power * rho * unexplained[:, None] * unexplained[None, :]
    out_cov = out_cov - torch.diag(torch.diagonal(out_cov)) + torch.diag(diagonal)
    return out_mean.to(dtype), out_cov.to(dtype)


def gaussian_closure(net: MLP, terms: int = HERMITE_TERMS, tail: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Output mean and covariance of ``net`` with every pre-activation vector taken as jointly Gaussian and each
    nonlinear step done by ``gaussian_activation_moments`` (``tail``: with the Hermite tail); exact for nets with
    at most one hidden layer."""
    mean = net.biases[0] if net.biases[0] is not None else net.weights[0].new_zeros(net.weights[0].shape[0])
    cov = net.weights[0] @ net.weights[0].T
    for layer in range(net.depth):
        act_mean, act_cov = gaussian_activation_moments(net.activations[layer], mean, cov, terms, tail)
        weight, bias = net.weights[layer + 1], net.biases[layer + 1]
        mean = weight @ act_mean if bias is None else weight @ act_mean + bias
        cov = weight @ act_cov @ weight.T
    return mean, cov


def prefix(net: MLP) -> MLP:
    """The network up to the last hidden layer's pre-activations (depth − 1 hidden layers)."""
    return MLP(net.weights[:-1], net.biases[:-1], net.activations[:-1])


def expected_loss(
    student: MLP,
    teacher: MLP,
    order: int = 2,
    variant: str = "simple",
    *,
    factored: bool = False,
    method: str = "kprop",
    hermite_terms: int = HERMITE_TERMS,
    hermite_tail: bool = False,
) -> torch.Tensor:
    """Estimate of E_{x~N(0,I)} ‖S(x) − T(x)‖² as a differentiable torch scalar (see the module docstring).

    ``method="kprop"``: order-K propagation (K ≥ 2; K = 1 carries no student–teacher covariance) up to the last
    hidden layer, then the exact Gaussian last step. ``method="mehler"``: the Gaussian closure at every layer
    (``order``, ``variant``, ``factored`` unused). Both are exact (to the Mehler truncation ``hermite_terms``)
    when the networks have one hidden layer, or none. ``hermite_tail`` adds the Mehler series' tail estimate
    (module docstring) at every Gaussian step.
    """
    if method not in METHODS:
        raise MechestError(f"unknown distillation method {method!r}; expected one of {', '.join(METHODS)}")
    scheme = Scheme(order, variant, factored)
    if order < 2:
        raise MechestError("the distillation loss needs order K >= 2 (K = 1 drops the student-teacher covariance)")
    joint = joint_network(student, teacher)
    if joint.depth == 0:
        mean, cov = joint.biases[0], joint.weights[0] @ joint.weights[0].T
        return mean @ mean + torch.trace(cov)
    if method == "mehler":
        mean, cov = gaussian_closure(prefix(joint), hermite_terms, hermite_tail)
    else:
        hidden = propagate(prefix(joint), scheme)
        mean, cov = hidden.mean, hidden.cov
    act_mean, act_cov = gaussian_activation_moments(joint.activations[-1], mean, cov, hermite_terms, hermite_tail)
    out_weight, out_bias = joint.weights[-1], joint.biases[-1]
    out_mean = out_weight @ act_mean + out_bias
    return out_mean @ out_mean + (act_cov * (out_weight.T @ out_weight)).sum()


def sampled_loss(student: MLP, teacher: MLP, inputs: torch.Tensor) -> torch.Tensor:
    """Ordinary distillation loss on a minibatch: mean over rows x of ‖S(x) − T(x)‖² (teacher not differentiated)."""
    with torch.no_grad():
        target = teacher(inputs)
    return ((student(inputs) - target) ** 2).sum(dim=1).mean()


def init_student(teacher: MLP, width: int, seed: int = 0) -> MLP:
    """A He-init student of ``width`` with the teacher's depth, dims and activations, zero biases everywhere,
    on the teacher's device (drawn on the CPU, so the same seed gives the same student everywhere).

    Every weight and bias is a leaf tensor with requires_grad, ready for a torch optimizer.
    """
    net = random_mlp(width, teacher.depth, teacher.activations, input_dim=teacher.input_dim,
                     output_dim=teacher.output_dim, seed=seed, dtype=teacher.dtype)
    weights = [w.detach().to(teacher.device).requires_grad_(True) for w in net.weights]
    biases = [torch.zeros(w.shape[0], dtype=w.dtype, device=teacher.device, requires_grad=True) for w in net.weights]
    return MLP(weights, biases, list(net.activations))


def attached(model: nn.Sequential) -> MLP:
    """The MLP of an ``nn.Sequential`` that *shares* its parameters (no copy), so gradients of
    ``expected_loss`` reach ``model.parameters()``; ``mechest.from_sequential`` checks the layout.
    """
    activations = from_sequential(model).activations
    linears = [module for module in model if isinstance(module, nn.Linear)]
    return MLP([linear.weight for linear in linears], [linear.bias for linear in linears], activations)


def parameters(net: MLP) -> list[torch.Tensor]:
    """Every weight and bias tensor of ``net`` (for a torch optimizer)."""
    return list(net.weights) + [b for b in net.biases if b is not None]
