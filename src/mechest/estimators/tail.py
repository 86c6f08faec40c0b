"""Rare-event probabilities P(z_i > t) (or P(z_i < t)) of one layer's pre-activations, every neuron at once.

Layer L counts pre-activations from 1: layer 1 is z = W_0 x + b_0, layer L is W_{L-1} a_{L-2} + b_{L-1}, and
layer depth + 1 is the network's output. Write s = +1 for the upper tail and s = -1 for the lower one; then
P(s·z_i > s·t) is the probability of the event. Three estimators:

- ``lpe`` (docs/method.md §11, "low-probability estimation"): the network up to z, then a Heaviside unit
  1{s·(z - t) > 0} (the bias -s·t folded into the last linear map), then a 1×n output map. The propagated mean
  of the Heaviside layer is the probability. At every order kprop's mean of a unit reads only the marginal
  cumulants of its input: with x = (t - μ)/σ for the event z > t,

      P = Φ̄(x) + κ_3/6 · w_H(3) + κ_4/24 · w_H(4),   w_H(k) = E[∂^k 1{Z > t}] = σ^(-k) He_{k-1}(x) ϕ(x),

  the first-order Gram–Charlier tail.
- ``edgeworth``: the Edgeworth tail from z_i's propagated marginal cumulants (μ, σ², κ_3, κ_4), standardised
  γ_1 = κ_3/σ³, γ_2 = κ_4/σ⁴:

      P(z > t) = Φ̄(x) + ϕ(x)·[γ_1/6 · He_2(x) + γ_2/24 · He_3(x) + γ_1²/72 · He_5(x)],

  i.e. the LPE value plus the γ_1² term of the same order (n^-1) that the diagram expansion leaves out.
- ``saddlepoint``: Lugannani–Rice on the cumulant generating function truncated after κ_4,
  K(s) = μs + σ²s²/2 + κ_3 s³/6 + κ_4 s⁴/24: solve K'(ŝ) = t, then with w = sign(ŝ)·sqrt(2(ŝt − K(ŝ))) and
  u = ŝ·sqrt(K''(ŝ)),

      P(z > t) = Φ̄(w) + ϕ(w)·(1/u − 1/w).

  Where the truncated K has no saddlepoint on the branch through s = 0 (K'' ≤ 0 somewhere on [0, ŝ]), or t is
  within 1e-4 σ of μ (where the formula is 0/0), the Edgeworth value is used; ``fallbacks`` counts those neurons.
- ``mc``: Monte Carlo counts of the event, with Wilson 95% intervals.

Truncated expansions can leave [0, 1]; estimates are clipped there and ``TailEstimate.clipped`` says how many.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from mechest.errors import MechestError
from mechest.estimators.estimate import counted_propagation, resolve_dtype
from mechest.estimators.montecarlo import (
    DEFAULT_CHUNK_SIZE,
    check_sample_count,
    chunk_count,
    chunk_generator,
    chunk_size_of,
)
from mechest.flops import FlopCounter
from mechest.kprop import Scheme, runs_on_executor
from mechest.kprop.engine import dense_towers, input_tower, linear_step
from mechest.kprop.factored import output_marginals
from mechest.kprop.plan import Plan, compile_plan
from mechest.kprop.run import executor_cumulants, prepare
from mechest.limits import (
    Quantity,
    check_propagation_memory,
    check_sample_time,
    hidden_quantities,
    require_all_finite,
    require_finite,
)
from mechest.math.gaussian import normal_cdf, normal_pdf
from mechest.math.tensors.harmonic import slice_of
from mechest.math.wick import activation_function
from mechest.mlp import MLP
from mechest.progress import progress_bar

METHODS = ("lpe", "edgeworth", "saddlepoint", "mc")
WILSON_Z = 1.959963984540054  # two-sided 95% normal quantile
MIN_VARIANCE = 1e-10  # the engine's variance floor (docs/method.md §6.1)
NEWTON_STEPS = 80
NEWTON_MAX_STEP = 1.0  # in units of s; keeps Newton on the branch through s = 0


@dataclass
class TailEstimate:
    """Per-neuron tail probabilities of one layer and what they cost.

    ``prob`` is clipped to [0, 1]; ``raw`` is the value before clipping. Monte Carlo also fills ``samples``,
    ``counts`` and the Wilson 95% interval ``low``..``high``.
    """

    method: str
    layer: int
    threshold: float
    upper: bool
    raw: torch.Tensor
    flops: int
    seconds: float
    order: int | None = None
    variant: str | None = None
    factored: bool = False
    fallbacks: int = 0
    samples: int | None = None
    counts: torch.Tensor | None = None
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None

    @property
    def prob(self) -> torch.Tensor:
        return self.raw.clamp(0.0, 1.0)

    @property
    def clipped(self) -> int:
        """How many neurons' raw estimates fell outside [0, 1]."""
        return int(((self.raw < 0) | (self.raw > 1)).sum())

    def to_dict(self) -> dict:
        """The JSON-ready summary printed by ``mechest tail --json``."""
        record: dict = {"method": self.method, "layer": self.layer, "threshold": self.threshold,
                        "tail": "upper" if self.upper else "lower", "prob": self.prob.tolist(),
                        "flops": int(self.flops), "seconds": self.seconds, "clipped": self.clipped}
        if self.method == "mc":
            record.update(samples=self.samples, counts=self.counts.tolist(), low=self.low.tolist(),
                          high=self.high.tolist())
        else:
            record.update(order=self.order, variant=self.variant, factored=self.factored)
        if self.method == "saddlepoint":
            record.update(fallbacks=self.fallbacks)
        return record


def check_layer(net: MLP, layer: int) -> int:
    """Return ``layer`` unless it is outside 1..depth + 1 (then a one-line MechestError)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= net.depth + 1:
        raise MechestError(f"layer must be between 1 and {net.depth + 1} (the output) for this network, got {layer}")
    return layer


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise MechestError(f"the threshold must be a finite number, got {threshold}")
    return threshold


def truncate(net: MLP, layer: int) -> MLP:
    """The network whose output is the pre-activation of ``layer`` (its first ``layer`` linear maps)."""
    check_layer(net, layer)
    return MLP(list(net.weights[:layer]), list(net.biases[:layer]), list(net.activations[:layer - 1]))


def heaviside_net(net: MLP, layer: int, threshold: float, upper: bool = True) -> MLP:
    """``net`` up to ``layer``, then hidden unit 1{s·(z - t) > 0} per neuron, then a 1×n all-ones output map.

    The output map is 1×n so that pushing the top cumulant through it costs O(n^K), not O(n^(K+1)).
    """
    prefix = truncate(net, layer)
    sign = 1.0 if upper else -1.0
    last = prefix.weights[-1]
    bias = prefix.biases[-1] if prefix.biases[-1] is not None else torch.zeros_like(last[:, 0])
    weights = prefix.weights[:-1] + [sign * last, last.new_ones(1, last.shape[0])]
    biases = prefix.biases[:-1] + [sign * (bias - check_threshold(threshold)), None]
    return MLP(weights, biases, prefix.activations + ["heaviside"])


def lpe(net: MLP, layer: int, threshold: float, upper: bool = True, *, order: int = 2, variant: str = "simple",
        factored: bool = False, dtype: torch.dtype | str | None = None) -> TailEstimate:
    """Method 1: propagate through the Heaviside network and read the mean of its Heaviside layer."""
    scheme = Scheme(order, variant, factored)
    augmented = heaviside_net(net, layer, threshold, upper).to(dtype=resolve_dtype(dtype, torch.float64))
    check_propagation_memory(augmented.dims, scheme, augmented.dtype, augmented.device)
    result, flops, seconds = counted_propagation(augmented, scheme)
    require_all_finite("lpe", [*hidden_quantities(result, layer - 1),
                               ("probability", f"layer {layer}", result.layer_means[-1])])
    return TailEstimate("lpe", layer, float(threshold), upper, result.layer_means[-1], flops, seconds,
                        order=order, variant=variant, factored=factored)


def marginal_cumulants(net: MLP, layer: int, scheme: Scheme) -> torch.Tensor:
    """Rows μ_i, σ_i², κ_3(i,i,i), κ_4(i,i,i,i) of the pre-activation of ``layer`` as kprop propagates them at
    ``scheme``.

    Runs the layer steps on ``truncate(net, layer)`` and reads the single-index slice of each tracked cumulant
    after the last linear map (an untracked degree gives 0): the executor where the scheme runs there (factored
    K = 3 simple gives the unfactorised engine's marginals at a fraction of the cost), the factored engine for
    factored K = 3 augment (the reference's factored term set), else the unfactorised engine. K = 1's second
    cumulant is its trace part, as in mean field. A MechestError names the first hidden layer whose mean or
    variance is not finite (of the executor and the unfactorised engine; of the factored engine only ``layer``'s).
    """
    prefix = truncate(net, layer)
    if runs_on_executor(scheme):
        result = executor_cumulants(prefix, scheme, outputs="marginals")
        zeros = torch.zeros_like(result.mean)
        rows = torch.stack([result.mean, torch.diagonal(result.cov),
                            zeros if result.third_diagonal is None else result.third_diagonal,
                            zeros if result.fourth_diagonal is None else result.fourth_diagonal])
        require_finite("kprop", rows, hidden_quantities(result))
        return rows
    if scheme.factored:
        if scheme.order != 3:
            raise MechestError(f"factored marginal cumulants exist at order 3, got {scheme}")
        return output_marginals(prefix, scheme.order, scheme.variant)
    return dense_marginals(prefix, compile_plan(scheme.order, scheme.variant))


def dense_marginals(net: MLP, plan: Plan) -> torch.Tensor:
    """``marginal_cumulants`` of ``net``'s output by the unfactorised engine under ``plan``; a MechestError naming
    the first hidden layer whose mean or variance is not finite."""
    tower = input_tower(net.input_dim, plan, net.weights[0])
    for layer, tower in enumerate(dense_towers(net, plan), start=1):  # noqa: B007 (the output map reads the last)
        require_all_finite("kprop", [("mean", f"hidden layer {layer}", tower[1].core),
                                     ("variance", f"hidden layer {layer}", slice_of(tower[2], (2,)))])
    tower = linear_step(tower, net.weights[-1], net.biases[-1], set(plan.radial))
    zeros = torch.zeros_like(tower[1].core)
    return torch.stack([slice_of(tower[d], (d,)) if d in tower else zeros for d in (1, 2, 3, 4)])


CUMULANT_NAMES = ("mean", "variance", "third cumulant", "fourth cumulant")


def marginal_quantities(cumulants: torch.Tensor, layer: int) -> Iterator[Quantity]:
    """Rows μ, σ², κ_3, κ_4 of the pre-activation of ``layer``, named."""
    for name, row in zip(CUMULANT_NAMES, cumulants, strict=True):
        yield name, f"layer {layer}", row


def hermite_tail(cumulants: torch.Tensor, threshold: float, upper: bool = True,
                 skew_squared: bool = True) -> torch.Tensor:
    """Edgeworth tail P(s·z > s·t) from rows (μ, σ², κ_3, κ_4); ``skew_squared=False`` drops the γ_1² term.

    The lower tail is the upper tail of -z, whose cumulants are (-μ, σ², -κ_3, κ_4) at threshold -t.
    """
    mean, variance, third, fourth = cumulants
    sign = 1.0 if upper else -1.0
    sigma = variance.clamp_min(MIN_VARIANCE).sqrt()
    x = sign * (threshold - mean) / sigma
    g1 = sign * third / sigma**3
    g2 = fourth / sigma**4
    he2, he3, he5 = x * x - 1, x**3 - 3 * x, x**5 - 10 * x**3 + 15 * x
    correction = g1 / 6 * he2 + g2 / 24 * he3
    if skew_squared:
        correction = correction + g1 * g1 / 72 * he5
    density = normal_pdf(x)  # 0 far out, where the Hermite polynomials may overflow: the correction is then 0
    return normal_cdf(-x) + torch.where(density > 0, density * correction, torch.zeros_like(density))


def saddlepoint_tail(
    cumulants: torch.Tensor, threshold: float, upper: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lugannani–Rice tail P(s·z > s·t) from the quartic-truncated CGF, and where it applied (else Edgeworth).

    Newton's method on K'(s) = t from s = 0 with steps capped at NEWTON_MAX_STEP; the saddlepoint is accepted
    when it solves the equation, K'' > 0 on all of [0, ŝ] (K'' is a quadratic: check both ends and its vertex)
    and the Lugannani–Rice value is a probability.
    """
    sign = 1.0 if upper else -1.0
    mean, variance, third, fourth = cumulants * torch.tensor([[sign], [1.0], [sign], [1.0]], dtype=cumulants.dtype)
    t = sign * threshold
    variance = variance.clamp_min(MIN_VARIANCE)

    def slope(s: torch.Tensor) -> torch.Tensor:
        return mean + variance * s + third * s**2 / 2 + fourth * s**3 / 6

    def curvature(s: torch.Tensor) -> torch.Tensor:
        return variance + third * s + fourth * s**2 / 2

    s = torch.zeros_like(mean)
    for _ in range(NEWTON_STEPS):
        step = (slope(s) - t) / curvature(s).clamp_min(MIN_VARIANCE)
        s = s - step.clamp(-NEWTON_MAX_STEP, NEWTON_MAX_STEP)
    vertex = torch.where(fourth > 0, -third / fourth.clamp_min(1e-300), torch.zeros_like(s))
    vertex_inside = (fourth > 0) & (vertex * s > 0) & (vertex.abs() < s.abs())
    convex = (curvature(s) > 0) & ~(vertex_inside & (curvature(vertex) <= 0))
    solved = (slope(s) - t).abs() <= 1e-9 * (1 + abs(t))
    valid = solved & convex & (s.abs() * variance.sqrt() > 1e-4)
    s = torch.where(valid, s, torch.ones_like(s))  # keep the formula finite where it is not used
    cgf = mean * s + variance * s**2 / 2 + third * s**3 / 6 + fourth * s**4 / 24
    w = torch.sign(s) * (2 * (s * t - cgf)).clamp_min(0).sqrt()
    u = s * curvature(s).clamp_min(MIN_VARIANCE).sqrt()
    lugannani_rice = normal_cdf(-w) + normal_pdf(w) * (1 / u - 1 / w)
    valid = valid & (lugannani_rice >= 0) & (lugannani_rice <= 1)  # 1/u − 1/w cancels badly near the mean
    return torch.where(valid, lugannani_rice, hermite_tail(cumulants, threshold, upper)), valid


def from_marginals(net: MLP, layer: int, threshold: float, upper: bool = True, *, method: str = "edgeworth",
                   order: int = 2, variant: str = "simple", factored: bool = False,
                   dtype: torch.dtype | str | None = None) -> TailEstimate:
    """Methods 2 and 3: the Edgeworth or saddlepoint tail of the propagated marginal cumulants.

    FLOPs are counted on the run itself (the counter adds microseconds per operation).
    """
    scheme = Scheme(order, variant, factored)
    threshold = check_threshold(threshold)
    net = net.to(dtype=resolve_dtype(dtype, torch.float64))
    prefix = truncate(net, layer)  # what marginal_cumulants propagates
    check_propagation_memory(prefix.dims, scheme, net.dtype, net.device)
    prepare(prefix, scheme)
    start = time.perf_counter()
    with FlopCounter() as counter:
        cumulants = marginal_cumulants(net, layer, scheme)
        if method == "saddlepoint":
            raw, valid = saddlepoint_tail(cumulants, threshold, upper)
        else:
            raw, valid = hermite_tail(cumulants, threshold, upper), torch.ones_like(cumulants[0], dtype=torch.bool)
    seconds = time.perf_counter() - start
    require_finite(method, raw, marginal_quantities(cumulants, layer))
    return TailEstimate(method, layer, threshold, upper, raw, counter.total, seconds, order=order, variant=variant,
                        factored=factored, fallbacks=int((~valid).sum()))


def wilson_interval(counts: torch.Tensor, samples: int, z: float = WILSON_Z) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score interval for a binomial proportion: (p̂ + z²/2N ∓ z·sqrt(p̂(1-p̂)/N + z²/4N²)) / (1 + z²/N)."""
    p = counts.to(torch.float64) / samples
    centre = p + z * z / (2 * samples)
    half = z * torch.sqrt(p * (1 - p) / samples + z * z / (4 * samples * samples))
    scale = 1 + z * z / samples
    return ((centre - half) / scale).clamp_min(0.0), ((centre + half) / scale).clamp_max(1.0)


Event = tuple[float, bool]  # (threshold t, upper): upper counts z_i > t, lower z_i < t


def exceedance_table(net: MLP, layers: Sequence[int], events: Sequence[Event], samples: int, seed: int,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> torch.Tensor:
    """counts[layer, event, neuron] = #{inputs with s·(z_i − t) > 0} (int64, on the CPU) for the pre-activations
    z of ``layers`` (1 = first hidden layer, depth + 1 = output), every layer and event from one forward pass per
    chunk. Chunk c uses mechest.estimators.montecarlo's generator of (seed, c), so a count does not depend on the order.
    The layers must have one width (the table's last axis)."""
    widths = {net.dims[layer] for layer in layers}
    if len(widths) != 1:
        raise MechestError(f"layers {', '.join(map(str, layers))} have different widths {sorted(widths)}; "
                           "count them one width at a time")
    counts = torch.zeros(len(layers), len(events), widths.pop(), dtype=torch.int64)
    with torch.no_grad(), progress_bar(samples, unit="sample", desc="exceedance counts", shown=progress) as bar:
        for chunk in range(chunk_count(samples, chunk_size)):
            size = chunk_size_of(chunk, samples, chunk_size)
            h = torch.randn(size, net.input_dim, generator=chunk_generator(seed, chunk, net.device),
                            dtype=net.dtype, device=net.device)
            for index in range(net.depth + 1):
                z = h @ net.weights[index].T
                z = z if net.biases[index] is None else z + net.biases[index]
                require_all_finite("mc", [("pre-activation", f"layer {index + 1}", z)])
                if index + 1 in layers:
                    row = list(layers).index(index + 1)
                    for column, (t, upper) in enumerate(events):
                        counts[row, column] += ((z > t) if upper else (z < t)).sum(dim=0).cpu()
                if index < net.depth:
                    h = activation_function(net.activations[index])(z)
            bar.update(size)
    return counts


def exceedance_counts(net: MLP, samples: int, seed: int, threshold: float, upper: bool,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> torch.Tensor:
    """Exact int64 counts #{s·(z_i − t) > 0} of the output z of ``net`` over ``samples`` inputs from ``seed``."""
    table = exceedance_table(net, (net.depth + 1,), ((threshold, upper),), samples, seed, chunk_size, progress)
    return table[0, 0].to(net.device)


def monte_carlo(net: MLP, layer: int, threshold: float, upper: bool = True, *, samples: int, seed: int = 0,
                dtype: torch.dtype | str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                progress: bool = False) -> TailEstimate:
    """Monte Carlo: the fraction of ``samples`` inputs whose pre-activation crosses ``threshold``.

    FLOPs = samples × (one forward pass up to ``layer`` + 1 comparison per neuron), random numbers not counted.
    """
    threshold = check_threshold(threshold)
    prefix = truncate(net, layer).to(dtype=resolve_dtype(dtype, net.dtype))
    samples = check_sample_time(check_sample_count(samples), prefix.flops_per_sample() + prefix.output_dim)
    start = time.perf_counter()
    counts = exceedance_counts(prefix, samples, seed, threshold, upper, chunk_size, progress)
    seconds = time.perf_counter() - start
    low, high = wilson_interval(counts, samples)
    flops = samples * (prefix.flops_per_sample() + prefix.output_dim)
    return TailEstimate("mc", layer, threshold, upper, counts.to(torch.float64) / samples, flops, seconds,
                        samples=samples, counts=counts, low=low, high=high)


def tail_probability(net: MLP, layer: int, threshold: float, method: str = "lpe", *, upper: bool = True,
                     order: int = 2, variant: str = "simple", factored: bool = False, samples: int | None = None,
                     seed: int = 0, dtype: torch.dtype | str | None = None, progress: bool = False) -> TailEstimate:
    """P(z_i > t) (``upper``) or P(z_i < t) for every neuron of the pre-activation of ``layer`` (from 1).

    ``method``: "lpe" (Heaviside unit + kprop at ``order``/``variant``/``factored``), "edgeworth" or
    "saddlepoint" (tail formulas from the propagated marginal cumulants; ``factored`` at K = 3), or "mc"
    (``samples`` Gaussian inputs from ``seed``).
    """
    check_layer(net, layer)
    if method != "mc" and samples is not None:
        raise MechestError(f"a sample count (--samples) is for method mc; {method} draws no samples")
    if method == "lpe":
        return lpe(net, layer, threshold, upper, order=order, variant=variant, factored=factored, dtype=dtype)
    if method in ("edgeworth", "saddlepoint"):
        return from_marginals(net, layer, threshold, upper, method=method, order=order, variant=variant,
                              factored=factored, dtype=dtype)
    if method == "mc":
        if samples is None:
            raise MechestError("method 'mc' needs a sample count (samples=...)")
        return monte_carlo(net, layer, threshold, upper, samples=samples, seed=seed, dtype=dtype, progress=progress)
    raise MechestError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
