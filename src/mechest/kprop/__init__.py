"""Cumulant propagation ("kprop"): estimate E[M(x)] by pushing cumulants through the layers.

``propagate(net, order, variant)`` is the single entry point; see docs/method.md §4–§7.
"""

from __future__ import annotations

from mechest.errors import MechestError
from mechest.kprop.engine import propagate_general
from mechest.kprop.factored import propagate_factored
from mechest.kprop.factored4 import propagate_factored4
from mechest.kprop.gaussian import covariance_propagation, mean_field
from mechest.kprop.result import Propagation
from mechest.mlp import MLP

MAX_ORDER = 4
VARIANTS = ("simple", "augment")
ORDER_ONE_VARIANTS = ("isotropic",)
"""Variants that exist at K = 1 only: "isotropic" (the cheapest estimate; mechest.kprop.gaussian)."""
ALL_VARIANTS = VARIANTS + ORDER_ONE_VARIANTS


def check_options(order: int, variant: str) -> None:
    """Raise a one-line MechestError unless 1 ≤ order ≤ MAX_ORDER and the variant is known."""
    if not 1 <= order <= MAX_ORDER:
        raise MechestError(f"order must be between 1 and {MAX_ORDER}, got {order}")
    if variant not in ALL_VARIANTS:
        raise MechestError(f"unknown variant {variant!r}; expected one of {', '.join(ALL_VARIANTS)}")
    if variant in ORDER_ONE_VARIANTS and order != 1:
        raise MechestError(f"variant {variant!r} exists at order 1 only, got order {order}")


def propagate(net: MLP, order: int, variant: str = "simple", factored: bool = False) -> Propagation:
    """Propagate the cumulants of x ~ N(0, I) through ``net`` to order ``order`` (K) in ``variant``.

    K = 1 (also in its K = 1-only "isotropic" variant) and K = 2 simple use the closed Gaussian recursions of
    mechest.kprop.gaussian; everything else runs the general diagram engine (which agrees with them; see
    tests). ``factored=True`` carries the order-K cumulant in factored form (docs/method.md §7: K = 3 both variants,
    K = 4 simple). It equals the unfactorised estimate for SIMPLE; for AUGMENT it evaluates the reference's
    factored term set (mechest.combinatorics.factored_keeps_term). For K ≤ 2 it changes nothing.
    """
    check_options(order, variant)
    if factored and order == 3:
        return propagate_factored(net, order, variant)
    if factored and order == 4:
        if variant != "simple":
            raise MechestError("factored propagation at order 4 is implemented for the simple variant only; "
                               "drop --factored to run order 4 augment unfactored")
        return propagate_factored4(net, order, variant)
    if variant == "isotropic":
        return mean_field(net, isotropic=True)
    if order == 1:
        return mean_field(net)
    if order == 2 and variant == "simple":
        return covariance_propagation(net)
    return propagate_general(net, order, variant)


__all__ = ["ALL_VARIANTS", "MAX_ORDER", "ORDER_ONE_VARIANTS", "VARIANTS", "Propagation", "check_options", "propagate"]
