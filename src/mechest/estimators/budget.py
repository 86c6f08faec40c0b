"""Best scheme for a FLOP budget: predicted cost of every scheme on a network, and the choice.

The FLOPs of a propagation depend only on the network's structure (shapes, activations, which layers have
biases, which outputs are asked for), never on the weight values, so a scheme's cost is counted once per
structure (``count_flops``). A network wider than PROBE_WIDTH is not counted but predicted (``predicted_flops``):
on one code path the count is a polynomial in the dimensions of total degree ≤ D = ``cost_degree`` (products,
element-wise work, fixed-size tables), non-decreasing in each. With the probe dimensions q = ⌈d·b / max d⌉ (base
width b = ⌊PROBE_WIDTH / (D + 1)⌋) the count of the dimensions t·q is a polynomial g(t) of degree ≤ D, so D + 1
counts at t = 1 … D + 1 determine it (Lagrange interpolation), and g(max d / b) bounds the count from above (every
dimension d ≤ (max d / b)·q). It is exact when the dimensions are proportional to the probe, for the executor's and
the factored engines' schemes, whose operations do not change with the width (but for K = 3 closure's slice feed,
whose rank min(r, n) is capped at the narrowest probe, below the polynomial, which the extrapolation turns into an
over-estimate: ≈ 3% at width 96). The unfactorised engine evaluates some slices in a summed form from width
mechest.kprop.summed.MIN_WIDTH on, which costs fewer FLOPs than the formed slices its probes count (tested), so
there the prediction is an over-estimate (≈ 1.02–1.12x at width 36).
Either way a scheme predicted to fit never exceeds the budget.

Accuracy order (``ranking``): the squared error of kprop falls like n^−2K in width for He-init networks, so a
higher order is predicted better, augment better than simple at the same order (it keeps every diagram of squared
size Θ(n^−2K)), and factored equal to (simple) or just behind (augment) unfactored. At K = 2 augment is placed
after simple on deep narrow nets (width < AUGMENT_MIN_WIDTH_PER_LAYER · depth), where it measured worse
(docs/whestbench.md).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from functools import cache

import torch

from mechest.errors import MechestError
from mechest.flops import FlopCounter
from mechest.kprop import Scheme, propagate
from mechest.limits import check_propagation_memory
from mechest.mlp import MLP

PROBE_WIDTH = 32
AUGMENT_MIN_WIDTH_PER_LAYER = 16


def cost_degree(scheme: Scheme) -> int:
    """Degree in the width n of a scheme's FLOPs per layer (docs/method.md): n² for K = 1, n³ for K = 2, n^K for
    factored K ≥ 3, n^(K+1) unfactored."""
    if scheme.order == 1:
        return 2
    return scheme.order if scheme.factored else scheme.order + 1


def structure_key(net: MLP, outputs: str = "cov") -> tuple:
    """What the operations of a propagation depend on: shapes, activations, which layers have biases, dtype, device
    and the ``outputs`` asked for (mechest.kprop.propagate)."""
    return (tuple(net.dims), tuple(net.activations), tuple(b is not None for b in net.biases), net.dtype,
            str(net.device), outputs)


@cache
def _counted(key: tuple, scheme: Scheme, discount: bool) -> tuple[int, float]:
    dims, activations, has_bias, dtype, device, outputs = key
    net = structure_network(dims, activations, has_bias, dtype, device)
    with FlopCounter(discount=discount) as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a probe's values mean nothing: only its operations are counted
        propagate(net, scheme, outputs)
    return counter.total, counter.discounted


def count_flops(net: MLP, scheme: Scheme, discount: bool = False, outputs: str = "cov") -> tuple[int, float]:
    """(raw, discounted) FLOPs of propagating a network of ``net``'s structure at ``scheme`` giving ``outputs``,
    counted once per structure (discounted is 0 unless ``discount``)."""
    return _counted(structure_key(net, outputs), scheme, discount)


def structure_network(dims: tuple[int, ...], activations: tuple[str, ...], has_bias: tuple[bool, ...],
                      dtype: torch.dtype, device: str) -> MLP:
    """A network of that structure (fixed random weights: the FLOPs do not depend on them)."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(out, inp, generator=generator, dtype=dtype) / math.sqrt(inp)
               for inp, out in zip(dims[:-1], dims[1:])]
    biases = [torch.zeros(out, dtype=dtype) if bias else None for out, bias in zip(dims[1:], has_bias)]
    return MLP(weights, biases, list(activations)).to(device=device)


def interpolate(values: list[int], x: Fraction) -> Fraction:
    """The polynomial of degree < len(values) through (t, values[t − 1]) for t = 1, 2, …, evaluated at x (Lagrange,
    in exact rational arithmetic)."""
    nodes = range(1, len(values) + 1)
    total = Fraction(0)
    for node, value in zip(nodes, values):
        weight = Fraction(value)
        for other in nodes:
            if other != node:
                weight *= (x - other) / (node - other)
        total += weight
    return total


def predicted_flops(net: MLP, scheme: Scheme, outputs: str = "cov") -> float:
    """An over-estimate of the FLOPs of propagating ``net`` at ``scheme`` giving ``outputs``: the count itself for
    nets ≤ PROBE_WIDTH wide, else the count's polynomial in the width read from D + 1 probe counts (module
    docstring)."""
    dims, *rest = structure_key(net, outputs)
    widest = max(dims)
    if widest <= PROBE_WIDTH:
        return float(count_flops(net, scheme, outputs=outputs)[0])
    degree = cost_degree(scheme)
    base = PROBE_WIDTH // (degree + 1)
    probe = tuple(max(1, math.ceil(d * base / widest)) for d in dims)
    counts = [_counted((tuple(t * d for d in probe), *rest), scheme, False)[0] for t in range(1, degree + 2)]
    return float(interpolate(counts, Fraction(widest, base)))


def ranking(net: MLP) -> list[Scheme]:
    """Every scheme, predicted most accurate first (see the module docstring), but unfactored K = 3 simple, which
    gives factored K = 3 simple's estimate at a higher cost, and factored K = 3 core (selectable, never chosen for a
    budget: the closure is cheaper and was more accurate on every net measured; docs/method.md §7.8). K = 3 closure
    comes before K = 3 simple: its error was lower on every net measured (ReLU at 256×4, 256×8, 1024×16; tanh and
    GELU at 64×4) and never measurably higher (sigmoid at 64×4: both below the truths' noise floor), for ≈ 2n³ more
    FLOPs a layer (docs/results.md, "The fourth-cumulant closure")."""
    width = max(net.dims[1:-1], default=1)
    k2 = [Scheme(2, "augment"), Scheme(2)]
    if width < AUGMENT_MIN_WIDTH_PER_LAYER * net.depth:
        k2.reverse()
    return [Scheme(4, "augment"), Scheme(4, "simple", True), Scheme(4), Scheme(3, "augment"),
            Scheme(3, "augment", True), Scheme(3, "closure", True), Scheme(3, "simple", True), *k2, Scheme(1),
            Scheme(1, "isotropic")]


def fits_in_memory(net: MLP, scheme: Scheme) -> bool:
    """Whether propagating ``net`` at ``scheme`` fits in the available memory (mechest.limits' peak-memory model)."""
    try:
        check_propagation_memory(net.dims, scheme, net.dtype, net.device)
    except MechestError:
        return False
    return True


def choose_scheme(net: MLP, budget: float, outputs: str = "cov") -> Scheme:
    """The first scheme of ``ranking`` whose predicted FLOPs (giving ``outputs``) fit in ``budget`` and whose
    propagation fits in memory; a one-line MechestError with the cheapest scheme's cost if none does."""
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise MechestError(f"the FLOP budget must be a positive number, got {budget!r}")
    costs = {}
    for scheme in ranking(net):
        costs[scheme] = predicted_flops(net, scheme, outputs)
        if costs[scheme] <= budget and fits_in_memory(net, scheme):
            return scheme
    cheapest = min(costs, key=costs.get)
    raise MechestError(f"no kprop scheme fits in {budget:.3g} FLOPs on this network; the cheapest, {cheapest}, "
                       f"needs about {costs[cheapest]:.3g}")
