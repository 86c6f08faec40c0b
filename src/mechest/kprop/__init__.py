"""Cumulant propagation ("kprop"): estimate E[M(x)] by pushing cumulants through the layers.

``propagate(net, order, variant)`` is the single entry point; see design §2-§6.
"""

from __future__ import annotations

from mechest.errors import MechestError
from mechest.kprop.gaussian import covariance_propagation, mean_field
from mechest.kprop.result import Propagation
from mechest.mlp import MLP

MAX_ORDER = 4
VARIANTS = ("simple", "augment")


def propagate(net: MLP, order: int, variant: str = "simple") -> Propagation:
    """Propagate the cumulants of x ~ N(0, I) through ``net`` to order ``order`` (K) in ``variant``."""
    if order == 1:
        return mean_field(net)
    if order == 2 and variant == "simple":
        return covariance_propagation(net)
    raise MechestError(f"order {order} with variant {variant!r} is not implemented yet (orders 1, 2 simple are)")


__all__ = ["MAX_ORDER", "VARIANTS", "Propagation", "propagate"]
