"""The cumulant-propagation executor: K = 1, K = 2 simple, K = 2 augment and factored K = 3 simple for MLPs on any
NumPy-like array namespace ``xp`` (torch for autograd and CUDA, numpy, flopscope.numpy).

This package is self-contained (stdlib only, relative imports): ``mechest whestbench export`` copies it verbatim
into the estimator package as ``mechest_propagate/``, where ``xp`` is ``flopscope.numpy`` and every FLOP is
metered. It uses only operations that numpy, flopscope.numpy and torch share (``@``, ``*``, ``.T``,
``.sum(axis=)``, ``xp.diag``, ``eye``, ``exp``, ``sqrt``, ``where``, ``stack``, ``asarray``, ``concatenate``,
``einsum``); what differs between namespaces (the normal cdf, the Wick tables of activations other than ReLU,
products W M Wᵀ billed for the distinct entries of their symmetric result) comes in through ``Backend``.

Convention (as mechest.MLP): column vectors, each weight out×in, z_l = W_l a_{l−1} + b_l, a_l = φ_l(z_l) for the
hidden layers, then an optional linear output map z = W a + b; x ~ N(0, I). The mathematics is in
docs/method.md; in short:

- K = 1 (mean field) and K = 2 simple (covariance propagation): the closed Gaussian recursions (``closed``).
- K = 3 simple, factored: κ_3 = Sym(Σ_r A_r ⊗ A_r ⊗ C_r) in CP form (at K = 3 simple every term has two equal
  legs, so B = A is never stored), grouped into one *source* per layer whose A and C columns share a matrix T
  (``sources``), κ_4 kept as its pure trace c·Sym(M ⊗ M), κ_1 and κ_2 dense.
- K = 3 core and closure: κ_4 with an n×n matrix core, its off-diagonal from the (3,1) slice or modelled as a
  multiple of the covariance's (``fourth``); options of K = 3: compressed old sources (``source_compression``),
  thin correction legs (``thin``), Strassen products (``strassen``); with dead-unit pruning (``pruning``, K = 2
  augment's too) they are one value, the cost options ``PlanOptions`` (``options``).
- K = 2 augment: κ_1, κ_2 dense, κ_3 kept as the radial piece Sym(u ⊗ M) and κ_4 as c·Sym(M ⊗ M) (M = W Wᵀ).

The diagram terms, the pK → K conversions, the slices of the radial pieces and their projection coefficients
are *data* (``spec``, made by mechest.kprop.spec); this package only executes them (``planned``), each kind of
term in one einsum over coefficient arrays built from that data (the WhestBench grader gates the Python time
between operations, so their number matters). One concept per module, each importing only the modules below it
(docs/architecture.md lists them); this module re-exports what callers use.
"""

from __future__ import annotations

from .arrays import off_diagonal
from .closed import ISOTROPIC_TRACE_ROWS, covariance, mean_field, squared_row_norms
from .costs import choice_flops, covariance_flops, mean_field_flops, planned_flops
from .fourth import CLOSURE_SHAPE, FourthCore, core_projection, core_slices, core_spec, fourth_core
from .layers import OUTPUTS, Backend, Cumulants, Layers, layer_states, relu_layers
from .nonlinearity import carried_third, next_third
from .options import PlanOptions
from .pieces import projected_cores
from .propagation import marginal_slices, planned
from .schemes import choice_means, plan_key, run_scheme
from .source_compression import Compression, compressed, compressed_source
from .sources import expanded, is_compressed, mapped_third, third_cubic, third_slices
from .strassen import product
from .thin import ThinCorrection, separable_terms, thin_split
from .wick import relu_wick, relu_wick_terms

__all__ = ["CLOSURE_SHAPE", "ISOTROPIC_TRACE_ROWS", "OUTPUTS", "Backend", "Compression", "Cumulants", "FourthCore",
           "Layers", "PlanOptions", "ThinCorrection", "carried_third", "choice_flops", "choice_means", "compressed",
           "compressed_source", "core_projection", "core_slices", "core_spec", "covariance", "covariance_flops",
           "expanded", "fourth_core", "is_compressed", "layer_states", "mapped_third",
           "marginal_slices", "mean_field", "mean_field_flops", "next_third", "off_diagonal", "plan_key", "planned",
           "planned_flops", "product", "projected_cores", "relu_layers", "relu_wick", "relu_wick_terms",
           "run_scheme", "separable_terms", "squared_row_norms", "third_cubic", "third_slices", "thin_split"]
