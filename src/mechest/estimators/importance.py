"""Rare pre-activation events P(s·(z_i(x) − t) > 0), x ~ N(0, I), below what counting reaches: importance sampling
(``importance_probability``) and subset simulation (``subset_probability``, which needs no design point; on
fine-tuned networks it agreed with exact counts where the importance sampler was up to 2x low, see
docs/results.md).

For each neuron i of a layer, the proposal is an equal mixture of mean-shifted Gaussians N(μ_k, I), k = 0..m:
μ_0 = 0 (the *defensive* component, which bounds every weight by m + 1 and keeps events that are not rare, or
whose region the shifts miss, at plain Monte Carlo's accuracy) and μ_1..μ_m the *design points*: locally most
likely inputs of the event, argmin |x|² subject to s·(z_i(x) − t) ≥ 0. The estimate and its standard error over
N proposal draws are

    p̂ = mean_j 1{event(x_j)} w(x_j),   w(x) = ϕ(x) / q(x) = 1 / mean_k exp(μ_kᵀx − |μ_k|²/2),
    stderr = std_j(1{event(x_j)} w(x_j)) / sqrt(N).

With a single shift μ = s·d (no defensive component) this is the textbook mean-shifted sampler,
w = exp(−s·dᵀx + s²|d|²/2). The estimate is unbiased for any shifts; the shifts only set its variance. A failure
region the shifts miss is not a bias in expectation but may go unseen at N draws, so the design points are
searched from several starts and every distinct one within ``DESIGN_SLACK`` of the nearest is kept.

Design points come from the Hasofer–Lind–Rackwitz–Fiessler iteration on g(x) = s·(z_i(x) − t): linearise g at x_k
and jump to the nearest point of the linearised boundary, x_{k+1} = ((∇g·x_k − g(x_k)) / |∇g|²) ∇g. For a
ReLU net g is piecewise linear and the iteration typically lands on a vertex of its boundary in a few steps.
It follows the local gradient, so it is started both from random points and from the cross-entropy mean
(``cross_entropy_mean``), which finds where the event's probability mass is: HLRF alone missed the nearest
region of a 4-input net (an estimate 30x low), and random or inflated-Gaussian starts miss it in 256 dimensions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mechest.errors import MechestError
from mechest.estimators.montecarlo import (
    DEFAULT_CHUNK_SIZE,
    check_sample_count,
    chunk_count,
    chunk_generator,
    chunk_size_of,
)
from mechest.estimators.tail import check_layer, check_threshold, truncate
from mechest.flops import FlopCounter
from mechest.mlp import MLP

DESIGN_STEPS = 20
DESIGN_STARTS = 16  # random-direction starts, and as many again from the pilot
DESIGN_SLACK = 1.0  # keep design points with |x*| ≤ nearest + this (a point 1 further out is ~e^(−|x*|) as likely)
DISTINCT = 0.5  # design points closer than this are one point
START_RADIUS = 3.0  # random starts lie on this sphere, in many of the net's linear pieces (x = 0 is a kink)
CE_SAMPLES = 16384  # draws per level of the cross-entropy search (noise in its mean ~ sqrt(dim / elite))
CE_ELITE = 0.1  # fraction of each level's draws that sets the next level
CE_LEVELS = 20


@dataclass
class UnitEstimate:
    """Per-neuron estimates of P(s·(z_i − t) > 0) for the ``units`` of one layer, with standard errors."""

    layer: int
    threshold: float
    upper: bool
    units: list[int]
    prob: torch.Tensor
    stderr: torch.Tensor

    def event_dict(self, method: str) -> dict:
        """The JSON fields every such estimate has."""
        return {"method": method, "layer": self.layer, "threshold": self.threshold,
                "tail": "upper" if self.upper else "lower", "units": self.units, "prob": self.prob.tolist(),
                "stderr": self.stderr.tolist()}


@dataclass
class ImportanceEstimate(UnitEstimate):
    """Importance-sampling estimates, with the proposal means (units × shifts × input)."""

    hits: torch.Tensor
    samples: int
    shifts: list[torch.Tensor]
    flops: int
    seconds: float

    def to_dict(self) -> dict:
        return {**self.event_dict("importance"), "hits": self.hits.tolist(), "samples": self.samples,
                "shift_norms": [shift.norm(dim=1).tolist() for shift in self.shifts], "flops": self.flops,
                "seconds": self.seconds}


def event_margin(prefix: MLP, x: torch.Tensor, units: torch.Tensor, threshold: float, upper: bool) -> torch.Tensor:
    """g = s·(z_u(x) − t) for rows x[j] and neurons units[j] of the output of ``prefix`` (the event is g > 0)."""
    z = prefix(x).gather(1, units[:, None])[:, 0]
    return (z - threshold) if upper else (threshold - z)


def design_points(prefix: MLP, unit: int, threshold: float, upper: bool = True, *, starts: int = DESIGN_STARTS,
                  steps: int = DESIGN_STEPS, seed: int = 0, start: torch.Tensor | None = None) -> torch.Tensor:
    """Distinct approximate design points (rows) of the event of neuron ``unit``, nearest first.

    HLRF from ``starts`` random points on the sphere of radius START_RADIUS and from ``start`` (one batch; the
    cross-entropy mean in ``proposal_means``). A run's candidate is its shortest iterate on which the event holds
    (after a bisection along the ray to the boundary); runs that never reach the event are dropped, so the result
    has no rows when none does.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = [w.detach() for w in prefix.weights]
    frozen = MLP(weights, [None if b is None else b.detach() for b in prefix.biases], prefix.activations)
    x = torch.randn(starts, prefix.input_dim, generator=generator, dtype=torch.float64).to(prefix.dtype)
    x = START_RADIUS * x / x.norm(dim=1, keepdim=True)
    if start is not None:
        x = torch.cat([x, start[None]])
    units = torch.full((x.shape[0],), unit, dtype=torch.int64)
    best = torch.full((x.shape[0],), math.inf, dtype=prefix.dtype)
    candidates = torch.zeros_like(x)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        g = event_margin(frozen, x, units, threshold, upper)
        (gradient,) = torch.autograd.grad(g.sum(), x)
        with torch.no_grad():
            feasible = ray_to_boundary(frozen, x, units, threshold, upper)
            norms = feasible.norm(dim=1)
            better = norms < best
            best = torch.where(better, norms, best)
            candidates[better] = feasible[better]
            squared = (gradient * gradient).sum(dim=1, keepdim=True)
            flat = squared[:, 0] <= 1e-300  # a dead region: step outwards instead
            jump = ((gradient * x).sum(dim=1, keepdim=True) - g[:, None]) / squared.clamp_min(1e-300) * gradient
            x = torch.where(flat[:, None], 2 * x, jump)
    found = torch.isfinite(best)
    if not found.any():
        return candidates[:0]
    order = torch.argsort(best[found])
    points, norms = candidates[found][order], best[found][order]
    kept: list[torch.Tensor] = []
    for point, norm in zip(points, norms):
        if norm > norms[0] + DESIGN_SLACK:
            break
        if all((point - other).norm() > DISTINCT for other in kept):
            kept.append(point)
    return torch.stack(kept)


def proposal_means(prefix: MLP, unit: int, threshold: float, upper: bool, seed: int) -> torch.Tensor:
    """The mixture's means: 0 (defensive), the cross-entropy mean (the centre of the event's mass, which a wide
    region in many dimensions needs), and the design points."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        centre = cross_entropy_mean(prefix, unit, threshold, upper, generator)
    points = design_points(prefix, unit, threshold, upper, seed=seed, start=centre)
    return torch.cat([torch.zeros_like(centre)[None], centre[None], points])


def cross_entropy_mean(prefix: MLP, unit: int, threshold: float, upper: bool,
                       generator: torch.Generator) -> torch.Tensor:
    """A cross-entropy (multilevel) mean: from μ = 0, draw CE_SAMPLES x ~ N(μ, I), take the level γ =
    min(0, the (1 − CE_ELITE) quantile of g), and move μ to the plain mean of the draws with g ≥ γ; stop after
    the level that reaches γ = 0 (or CE_LEVELS levels). A point inside the event where its mass is, used only
    as an HLRF start (the nominal-weighted update of textbook CE degenerates to one draw in 256 dimensions)."""
    mean = torch.zeros(prefix.input_dim, dtype=prefix.dtype)
    units = torch.full((CE_SAMPLES,), unit, dtype=torch.int64)
    for _ in range(CE_LEVELS):
        x = mean + torch.randn(CE_SAMPLES, prefix.input_dim, generator=generator, dtype=torch.float64).to(prefix.dtype)
        g = event_margin(prefix, x, units, threshold, upper)
        level = min(0.0, float(torch.quantile(g, 1 - CE_ELITE)))
        elite = g >= level
        mean = x[elite].mean(dim=0)
        if level >= 0:
            break
    return mean


def ray_to_boundary(prefix: MLP, x: torch.Tensor, units: torch.Tensor, threshold: float, upper: bool,
                    iterations: int = 12) -> torch.Tensor:
    """For each row x, the point r·x on the event's boundary with the smallest r in (0, 2] at which the event
    holds (bisection between r = 0 and the first of r = 1, 2 where it holds); rows where neither does give inf."""
    scales = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
    for r in (2.0, 1.0):
        holds = event_margin(prefix, r * x, units, threshold, upper) >= 0
        scales = torch.where(holds, torch.full_like(scales, r), scales)
    low, high = torch.zeros_like(scales), scales.clone()
    reached = torch.isfinite(scales)
    high[~reached] = 1.0
    for _ in range(iterations):
        middle = (low + high) / 2
        holds = event_margin(prefix, middle[:, None] * x, units, threshold, upper) >= 0
        high = torch.where(holds, middle, high)
        low = torch.where(holds, low, middle)
    return torch.where(reached[:, None], high[:, None] * x, torch.full_like(x, math.inf))


def log_weight(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """log ϕ(x)/q(x) for the equal mixture q of N(μ_k, I): −logsumexp_k(μ_kᵀx − |μ_k|²/2) + log m."""
    exponents = x @ shifts.T - (shifts * shifts).sum(dim=1) / 2
    return math.log(shifts.shape[0]) - torch.logsumexp(exponents, dim=1)


def importance_probability(net: MLP, layer: int, threshold: float, units: list[int] | None = None, *,
                           upper: bool = True, samples: int = 1 << 16, seed: int = 0,
                           chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImportanceEstimate:
    """P(z_i > t) (or < t) of the pre-activation of ``layer`` for neurons ``units`` (default all) by importance
    sampling, ``samples`` proposal draws per neuron (module docstring).

    Neuron u's draws come from the defensive mixture of its design points; chunk c of neuron u uses the generator
    of (seed, u·2^32 + c). FLOPs: the design search (counted) plus samples × (a forward pass to the layer +
    the weight's m·(2·input + 2) + one comparison) per neuron, random numbers not counted.
    """
    check_layer(net, layer)
    threshold = check_threshold(threshold)
    samples = check_sample_count(samples)
    prefix = truncate(net, layer)
    width = prefix.output_dim
    units = list(range(width)) if units is None else check_units(units, width)
    start = time.perf_counter()
    with FlopCounter() as counter:
        shifts = [proposal_means(prefix, unit, threshold, upper, seed) for unit in units]
    flops = counter.total
    probs, errors, hits = [], [], []
    with torch.no_grad():
        for unit, shift in zip(units, shifts):
            total = torch.zeros((), dtype=torch.float64)
            squares = torch.zeros((), dtype=torch.float64)
            count = 0
            for chunk in range(chunk_count(samples, chunk_size)):
                size = chunk_size_of(chunk, samples, chunk_size)
                generator = chunk_generator(seed, (unit << 32) + chunk, net.device)
                component = torch.randint(0, shift.shape[0], (size,), generator=generator, device=net.device)
                x = torch.randn(size, net.input_dim, generator=generator, dtype=net.dtype, device=net.device)
                x = x + shift[component]
                margin = event_margin(prefix, x, torch.full((size,), unit, dtype=torch.int64), threshold, upper)
                hit = margin > 0
                weighted = torch.where(hit, log_weight(x, shift).exp(), torch.zeros_like(margin)).to(torch.float64)
                total += weighted.sum()
                squares += (weighted * weighted).sum()
                count += int(hit.sum())
            mean = total / samples
            variance = (squares / samples - mean * mean).clamp_min(0) * samples / max(samples - 1, 1)
            probs.append(mean)
            errors.append((variance / samples).sqrt())
            hits.append(count)
            flops += samples * (prefix.flops_per_sample() + shift.shape[0] * (2 * net.input_dim + 2) + 1)
    return ImportanceEstimate(layer, threshold, upper, units, torch.stack(probs), torch.stack(errors),
                              torch.tensor(hits), samples, shifts, flops, time.perf_counter() - start)


def check_units(units: list[int], width: int) -> list[int]:
    """``units`` as a list of distinct neuron indices in 0..width − 1, else a one-line MechestError."""
    units = list(units)
    if not units:
        raise MechestError("no units given")
    bad = [u for u in units if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < width]
    if bad:
        raise MechestError(f"unit {bad[0]} is out of range: the layer has units 0..{width - 1}")
    if len(set(units)) != len(units):
        raise MechestError(f"units repeat: {units}")
    return units


SUBSET_FRACTION = 0.1  # conditional probability of each level of subset simulation
SUBSET_MAX_LEVELS = 60
PCN_STEP = 0.6  # initial pCN step β; adapted towards acceptance rates in [0.2, 0.5]


@dataclass
class SubsetEstimate(UnitEstimate):
    """Subset-simulation estimates: the mean over ``repeats`` independent runs and its standard error."""

    levels: list[list[int]]
    samples: int
    repeats: int
    flops: int
    seconds: float

    def to_dict(self) -> dict:
        return {**self.event_dict("subset"), "levels": self.levels, "samples": self.samples,
                "repeats": self.repeats, "flops": self.flops, "seconds": self.seconds}


def subset_run(prefix: MLP, unit: int, threshold: float, upper: bool, samples: int,
               generator: torch.Generator) -> tuple[float, int, int]:
    """One subset simulation of P(g > 0): levels γ_1 < γ_2 < … at the (1 − SUBSET_FRACTION) quantiles of g,
    each level's states grown from the previous level's top SUBSET_FRACTION by preconditioned Crank–Nicolson
    moves x' = sqrt(1 − β²) x + β ξ (which leave N(0, I) invariant) accepted when g(x') ≥ γ. Returns
    (estimate SUBSET_FRACTION^k · #{g > 0}/N, levels k, forward passes)."""
    units = torch.full((samples,), unit, dtype=torch.int64)
    x = torch.randn(samples, prefix.input_dim, generator=generator, dtype=torch.float64).to(prefix.dtype)
    g = event_margin(prefix, x, units, threshold, upper)
    seeds = max(1, int(SUBSET_FRACTION * samples))
    chain = math.ceil(samples / seeds)
    step, estimate, forwards = PCN_STEP, 1.0, samples
    for level in range(SUBSET_MAX_LEVELS):
        top = torch.topk(g, seeds)
        gamma = float(top.values[-1])
        if gamma > 0:
            return estimate * float((g > 0).double().mean()), level, forwards
        estimate *= seeds / samples
        current, current_g = x[top.indices], top.values
        states, margins = [current], [current_g]
        for _ in range(chain - 1):
            noise = torch.randn(current.shape, generator=generator, dtype=torch.float64).to(prefix.dtype)
            proposal = math.sqrt(1 - step * step) * current + step * noise
            proposal_g = event_margin(prefix, proposal, units[:seeds], threshold, upper)
            accept = proposal_g >= gamma
            current = torch.where(accept[:, None], proposal, current)
            current_g = torch.where(accept, proposal_g, current_g)
            states.append(current)
            margins.append(current_g)
            rate = float(accept.double().mean())
            step = min(1.0, step * 1.3) if rate > 0.5 else max(0.02, step * 0.7) if rate < 0.2 else step
        x, g = torch.cat(states)[:samples], torch.cat(margins)[:samples]
        forwards += seeds * (chain - 1)
    return 0.0, SUBSET_MAX_LEVELS, forwards


def subset_probability(net: MLP, layer: int, threshold: float, units: list[int] | None = None, *,
                       upper: bool = True, samples: int = 4096, repeats: int = 4, seed: int = 0) -> SubsetEstimate:
    """P(z_i > t) (or < t) of the pre-activation of ``layer`` for neurons ``units`` (default all) by subset
    simulation (``subset_run``), a second verifier that needs no design point: its chains explore every region
    that the earlier levels reach, so it suits events spread over many directions, where a mixture of shifted
    Gaussians misses mass. The estimate is the mean of ``repeats`` independent runs of ``samples`` states per
    level; the standard error is their standard deviation / sqrt(repeats) (the estimator's O(1/N) bias is not in
    it). Run r of neuron u uses the generator of chunk (seed, u·2^32 + r). FLOPs: forward passes × (the
    prefix's forward FLOPs + 1 comparison), random numbers not counted."""
    check_layer(net, layer)
    threshold = check_threshold(threshold)
    samples = check_sample_count(samples)
    if repeats < 2:
        raise MechestError(f"subset simulation needs at least 2 repeats for a standard error, got {repeats}")
    prefix = truncate(net, layer)
    units = list(range(prefix.output_dim)) if units is None else check_units(units, prefix.output_dim)
    start = time.perf_counter()
    probs, errors, levels, forwards = [], [], [], 0
    with torch.no_grad():
        for unit in units:
            runs = [subset_run(prefix, unit, threshold, upper, samples,
                               chunk_generator(seed, (unit << 32) + r, "cpu")) for r in range(repeats)]
            values = torch.tensor([run[0] for run in runs], dtype=torch.float64)
            probs.append(values.mean())
            errors.append(values.std() / math.sqrt(repeats))
            levels.append([run[1] for run in runs])
            forwards += sum(run[2] for run in runs)
    flops = forwards * (prefix.flops_per_sample() + 1)
    return SubsetEstimate(layer, threshold, upper, units, torch.stack(probs), torch.stack(errors), levels, samples,
                          repeats, flops, time.perf_counter() - start)
