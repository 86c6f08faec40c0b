"""``propagate(net, scheme)``: the one entry point to cumulant propagation, dispatching each scheme to its engine.

- The executor (mechest.kprop.executor, on torch): K = 1 (simple, isotropic), K = 2 simple and augment, and
  factored K = 3 simple, core and closure, with κ_3 as per-layer CP sources. The fast path.
- The factored engines (mechest.kprop.factored, factored4): factored K = 3 augment and factored K = 4 simple.
- The unfactorised general engine (mechest.kprop.engine): every unfactored K ≥ 3 scheme, dense, Θ(n^(K+1)) per
  layer: the oracle the others are tested against.
"""

from __future__ import annotations

import functools

import torch

from mechest.kprop.backends import layers_of, torch_backend
from mechest.kprop.engine import propagate_general
from mechest.kprop.executor.layers import Backend, Cumulants, Layers
from mechest.kprop.executor.schemes import run_scheme
from mechest.kprop.factored import propagate_factored
from mechest.kprop.factored4 import propagate_factored4
from mechest.kprop.plan import compile_plan
from mechest.kprop.result import Propagation
from mechest.kprop.scheme import Scheme
from mechest.kprop.spec import executor_spec
from mechest.mlp import MLP

EXECUTOR_SCHEMES = frozenset({Scheme(1, "simple"), Scheme(1, "isotropic"), Scheme(2, "simple"), Scheme(2, "augment"),
                              Scheme(3, "simple", True), Scheme(3, "core", True), Scheme(3, "closure", True)})
PLANNED_SCHEMES = frozenset({Scheme(2, "augment"), Scheme(3, "simple", True), Scheme(3, "core", True),
                             Scheme(3, "closure", True)})
"""The executor schemes that run a plan (``planned``); K = 1 and K = 2 simple are closed recursions."""


def runs_on_executor(scheme: Scheme) -> bool:
    """Whether ``scheme`` runs on the array-namespace executor."""
    return scheme in EXECUTOR_SCHEMES


@functools.cache
def _executor_plan(order: int, variant: str, max_width: int) -> dict:
    return executor_spec(order, variant, max_width=max_width)


def executor_plan(scheme: Scheme, max_width: int) -> dict:
    """The executor's plan data for K = 2 augment or factored K = 3 simple, core or closure, with projection
    coefficients for widths up to ``max_width`` (rounded up to a power of two ≥ 64, so that few plans are ever
    built)."""
    return _executor_plan(scheme.order, scheme.variant, max(64, 1 << (max_width - 1).bit_length()))


def executor_cumulants(net: MLP, scheme: Scheme, outputs: str = "cov") -> Cumulants:
    """The executor's propagation of ``net`` (on its device and dtype) at an executor scheme, giving ``outputs``
    (mechest.kprop.executor.OUTPUTS) of the output."""
    return run_executor(torch_backend(net.device), layers_of(net), scheme, outputs)


def hidden_width(layers: Layers) -> int:
    """The widest hidden layer (1 without hidden layers): the projection coefficients a plan must hold."""
    return max((weight.shape[0] for weight in layers.weights[: len(layers.activations)]), default=1)


def run_executor(backend: Backend, layers: Layers, scheme: Scheme, outputs: str) -> Cumulants:
    """``layers`` propagated by the executor on ``backend`` at an executor scheme."""
    spec = executor_plan(scheme, hidden_width(layers)) if scheme in PLANNED_SCHEMES else None
    return run_scheme(backend, layers, scheme.order, scheme.variant, spec, outputs)


def prepare(net: MLP, scheme: Scheme) -> None:
    """One-time work that is not part of a propagation, done before a timed run: building the scheme's plan (the
    executor's plan data, or the engines' diagram enumeration; both cached)."""
    if scheme in PLANNED_SCHEMES:
        executor_plan(scheme, hidden_width(layers_of(net)))
    elif not runs_on_executor(scheme):
        compile_plan(scheme.order, scheme.variant, "factored" if scheme.factored else "full")


def propagate(net: MLP, scheme: Scheme, outputs: str = "cov") -> Propagation:
    """Propagate the cumulants of x ~ N(0, I) through ``net`` at ``scheme``: κ_1 and κ_2 of the output and of every
    hidden activation (docs/method.md). ``outputs="mean"`` lets the executor skip the output's covariance and the
    last hidden layer's (then None), which only the mean does not need. ``third`` is the output's dense third
    cumulant where an unfactorised scheme of K ≥ 3 tracks it, else None."""
    if runs_on_executor(scheme):
        result = executor_cumulants(net, scheme, outputs)
        covs = result.layer_covs
        if scheme.order == 1:
            covs = [torch.diag(trace.expand(mean.numel())) for trace, mean in zip(covs, result.layer_means)]
        return Propagation(result.mean, result.cov, result.layer_means, covs)
    if scheme.factored and scheme.order == 3:
        return propagate_factored(net, scheme.order, scheme.variant)
    if scheme.factored:
        return propagate_factored4(net, scheme.order, scheme.variant)
    return propagate_general(net, scheme.order, scheme.variant)
