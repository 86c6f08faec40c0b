"""mechest: mechanistic estimation of the expected output of random MLPs.

Entry points: ``random_mlp``/``load``/``from_sequential`` build a network, ``estimate`` estimates
E[M(x)] for x ~ N(0, I) by cumulant propagation (``method="kprop"``) or Monte Carlo (``method="mc"``).
"""

from mechest.errors import MechestError
from mechest.estimators.estimate import Estimate, estimate
from mechest.kprop import SCHEMES, Scheme
from mechest.mlp import MLP, Activation, from_sequential, load, random_mlp

__version__ = "0.1.0"  # the one place the version is set (pyproject.toml reads it)

__all__ = ["MLP", "SCHEMES", "Activation", "Estimate", "MechestError", "Scheme", "estimate", "from_sequential", "load",
           "random_mlp"]
