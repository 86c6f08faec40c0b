"""K = 1 (mean field) and K = 2 simple (covariance propagation): the closed Gaussian recursions."""

from __future__ import annotations

from typing import Any

from .arrays import off_diagonal
from .layers import Backend, Cumulants, Layers, check_outputs, layer_states
from .linear import linear_mean, linear_variance, symmetric_product
from .wick import activation_wick

ISOTROPIC_TRACE_ROWS = 8
"""Rows of W read to estimate tr(W Wᵀ)/n_out in the isotropic mean field (relative error ≈ sqrt(2/(8·n_in)) for
i.i.d. weights; all rows when W has fewer)."""


def squared_row_norms(xp: Any, weight: Any, isotropic: bool) -> Any:
    """diag(W Wᵀ) = Σ_k W_ik² per row, or (``isotropic``) its mean over ISOTROPIC_TRACE_ROWS evenly spaced rows,
    for every row."""
    if not isotropic:
        return linear_variance(xp, weight, None)
    sampled = weight[:: max(1, weight.shape[0] // ISOTROPIC_TRACE_ROWS)][:ISOTROPIC_TRACE_ROWS]
    return xp.zeros(weight.shape[0], dtype=weight.dtype) + xp.sum(sampled * sampled) / sampled.shape[0]


def mean_field(backend: Backend, layers: Layers, isotropic: bool = False) -> Cumulants:
    """K = 1: Gaussian marginals, the second cumulant kept as its trace part c·I, c = mean_i Var φ(z_i); through W
    it becomes c·W Wᵀ, of which only the diagonal is read. ``isotropic`` also replaces diag(W Wᵀ) by its estimated
    mean (docs/method.md §2). The state is (mean, c)."""
    xp = backend.xp

    def step(state: tuple, weight: Any, bias: Any | None, activation: str) -> tuple:
        mean, trace = state
        pre_mean = linear_mean(xp, weight, bias, mean)
        table = activation_wick(backend, activation, pre_mean, trace * squared_row_norms(xp, weight, isotropic), 0, 2)
        mean = table[0][1]
        return mean, xp.sum(table[0][2] - mean * mean) / mean.shape[0]

    states = list(layer_states(layers, (None, 1.0), step))
    result = Cumulants([mean for mean, _ in states], [trace for _, trace in states])
    if layers.output_map:
        (mean, trace), weight = states[-1] if states else (None, 1.0), layers.weights[-1]
        result.mean = linear_mean(xp, weight, layers.biases[-1], mean)
        result.cov = xp.diag(trace * squared_row_norms(xp, weight, isotropic))
    return result


def covariance(backend: Backend, layers: Layers, outputs: str = "cov") -> Cumulants:
    """K = 2 simple: Cov(a_i, a_j) = w_i(1,1) w_j(1,1) Σ_ij off the diagonal, Var a_i = w_i(0,2) − w_i(0,1)². The
    state is (mean, covariance). With ``outputs`` = "mean" the last hidden layer reads only diag(W Σ Wᵀ) and the
    output's covariance is not formed."""
    check_outputs(outputs)
    xp = backend.xp

    def step(state: tuple, weight: Any, bias: Any | None, activation: str) -> tuple:
        mean, cov = state
        pre_mean, pre_cov = linear_mean(xp, weight, bias, mean), symmetric_product(weight, cov,
                                                                                   sandwich=backend.sandwich)
        table = activation_wick(backend, activation, pre_mean, xp.diag(pre_cov), 1, 2)
        mean, slope = table[0][1], table[1][1]
        return mean, off_diagonal(xp, slope[:, None] * pre_cov * slope[None, :]) + xp.diag(table[0][2] - mean * mean)

    hidden = layers.hidden()
    mean_only_last = outputs == "mean" and len(hidden) > 1
    states = list(layer_states(layers.prefix(len(hidden) - mean_only_last), (None, None), step))
    result = Cumulants([mean for mean, _ in states], [cov for _, cov in states])
    mean, cov = states[-1] if states else (None, None)
    if mean_only_last:
        weight, bias, activation = hidden[-1]
        pre_var = linear_variance(xp, weight, cov)
        mean = activation_wick(backend, activation, linear_mean(xp, weight, bias, mean), pre_var, 0, 1)[0][1]
        result.layer_means.append(mean)
        result.layer_covs.append(None)
    if layers.output_map:
        weight = layers.weights[-1]
        result.mean = linear_mean(xp, weight, layers.biases[-1], mean)
        if outputs != "mean":
            result.cov = symmetric_product(weight, cov, sandwich=backend.sandwich)
    return result
