"""Cumulant propagation ("kprop"): estimate E[M(x)] by pushing cumulants through the layers.

``propagate(net, scheme)`` is the single entry point (mechest.kprop.run); the mathematics is in docs/method.md.
"""

from __future__ import annotations

from mechest.kprop.result import Propagation
from mechest.kprop.run import propagate, runs_on_executor
from mechest.kprop.scheme import (
    ALL_VARIANTS,
    FACTORED_ONLY_VARIANTS,
    MAX_ORDER,
    ORDER_ONE_VARIANTS,
    SCHEMES,
    VARIANTS,
    Scheme,
)

__all__ = ["ALL_VARIANTS", "FACTORED_ONLY_VARIANTS", "MAX_ORDER", "ORDER_ONE_VARIANTS", "SCHEMES", "VARIANTS",
           "Propagation", "Scheme", "propagate", "runs_on_executor"]
