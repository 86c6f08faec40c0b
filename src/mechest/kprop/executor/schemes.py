"""The executor's dispatch by (order, variant): ``run_scheme`` for any network, ``choice_means`` for
WhestBench's, and the plans' keys (``plan_key``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .closed import covariance, mean_field
from .fourth import fourth_core
from .layers import Backend, Cumulants, Layers, relu_layers
from .options import PlanOptions
from .propagation import planned


def plan_key(order: int, variant: str) -> str:
    """The key of a plan in the exported ``mechest_plan.json`` (and in ``choice_means``'s ``specs``); K = 3
    "closure" runs K = 3 "core"'s plan."""
    return f"{order},{'core' if variant == 'closure' else variant}"


def choice_means(backend: Backend, weights: Sequence[Any], order: int, variant: str, specs: dict,
                 window: int | None = None, options: PlanOptions = PlanOptions()) -> list[Any]:
    """E[a_l] for every layer of a bias-free ReLU net without output map (WhestBench's) by one (order, variant,
    window) choice; K = 3 and K = 2 augment run the plan ``specs[plan_key(order, variant)]`` (``planned``). K = 3
    runs with all of ``options`` (``PlanOptions``); K = 2 augment with its ``prune`` alone (compression, Strassen
    levels and a thin correction are K = 3's options, dropped for the other orders, so that one value serves every
    choice of a network); the closed recursions ignore it."""
    planned_options = options if order == 3 else PlanOptions(prune=options.prune)
    return run_scheme(backend, relu_layers(weights), order, variant, specs.get(plan_key(order, variant)),
                      window=window, options=planned_options).layer_means


def run_scheme(backend: Backend, layers: Layers, order: int, variant: str, spec: dict | None,
               outputs: str = "cov", window: int | None = None, options: PlanOptions = PlanOptions()) -> Cumulants:
    """The executor's one dispatch: K = 1 (variant "simple" or "isotropic") and K = 2 simple as their closed
    recursions, K = 2 augment and factored K = 3 simple by their plan ``spec`` (``planned``), K = 3 "core" as K = 3
    simple with κ_4's matrix core (``FourthCore(summed=False)``, the setting that was better than K = 3 simple on
    every measured net; ``spec`` with the core's data) and K = 3 "closure" with the core's covariance-shaped model,
    its feed into new κ_3 sources and augment's two-coordinate terms (``fourth_core(3, "closure")``, the same
    ``spec``). ``options``: ``planned``'s cost options (``PlanOptions``), passed whole to the planned schemes
    (``planned`` refuses a thin correction at K = 2 augment); the closed recursions ignore them (and keep every
    unit)."""
    if order == 1:
        return mean_field(backend, layers, isotropic=variant == "isotropic")
    if (order, variant) == (2, "simple"):
        return covariance(backend, layers, outputs)
    return planned(backend, layers, spec, window, outputs, fourth_core(order, variant), options)
