"""Train away a rare event: fine-tune M into M' so that P(z_{L,i} > t) falls for chosen units i while M' stays
close to M, E‖M'(x) − M(x)‖² ≤ ε · tr Cov M(x), x ~ N(0, I).

Mechanistic (``suppress``): both sides are estimated from the weights, never from samples.

- The event's probability p_i is the saddlepoint (Lugannani–Rice) tail of z_{L,i}'s marginal cumulants
  (μ, σ², κ_3, κ_4) as kprop propagates them (``mechest.estimators.tail.marginal_cumulants`` at ``order``; factored at
  K = 3), the most accurate of ``mechest.estimators.tail``'s formulas, and differentiable in the weights: the Newton
  iterations that find the saddlepoint are differentiated through. The training objective is mean_i log p_i,
  the log of the geometric mean, so every unit counts, however rare it already is.
- The function change D = E‖M' − M‖² is the Mehler-closure estimate of the joint network M' − M
  (``mechest.estimators.distill.expected_loss``, ``method="mehler"``, ``CHANGE_TERMS`` Hermite terms plus their tail
  estimate, which makes D ≈ 0 at M' = M), divided by ε·tr Cov M with tr Cov M from the same order of
  ``mechest.kprop.propagate``. Call c = D / (ε tr Cov M); the constraint is c ≤ 1.

The constraint is kept by **projection**, not a penalty: each step is a descent step on the tail objective
alone, then, if the step left c > 1, Newton steps θ ← θ − (c − 1 + PROJECTION_MARGIN)/|∇c|² ∇c onto the
linearised boundary (the Euclidean projection for a locally quadratic c), and, if PROJECTION_STEPS of those do
not reach c ≤ 1, a bisection back along the segment to the original weights (where c = 0). Why: every iterate
then satisfies the bound on its estimate (a penalty only approaches it, and its weight against log p would need
tuning), and the same code serves the sampled baseline, whose tail term (a hinge) has another scale. The
projection's evaluations of c are counted in the FLOPs.

The descent step is ``NormalizedDescent`` (heavy ball, fixed Euclidean step length over all parameters, cosine
decay), not Adam: Adam's per-coordinate scaling moves every weight by about the learning rate, also the many
that the tail hardly depends on but the function does, and the projection then spends the whole budget undoing
that (8 output units of a width-64, 3-hidden-layer ReLU net at p ≈ 1e-5: Adam at lr 1e-3 lowered their
estimates 2–24x in 200 steps, this 30–1400x in 100).

Sampled baseline (``suppress_sampled``): the same loop with both terms estimated on minibatches: the tail term
mean_{x, i} relu(s·(z_{L,i}(x) − t) + δ_i), a hinge that starts δ_i below the event, and c on the same
minibatch, mean_x ‖M'(x) − M(x)‖² / (ε tr Cov M) with tr Cov M from a pilot sample. At the end c is checked on
FINAL_BATCH fresh inputs and, if above 1, the weights are bisected back towards M.

FLOPs: the tail step's forward and backward pass is counted once with ``mechest.flops.FlopCounter`` (its
operations do not depend on the weight values), and so are one evaluation of c (forward) and one with its
gradient. Every step is charged the tail's forward and backward pass plus, per Newton projection check, one
evaluation of c with its gradient (also the check that passes, whose gradient is never taken: an over-count
of one backward pass of c per step, the same for both methods), plus every bisection evaluation (forward only).
The descent update itself is not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mechest.errors import MechestError
from mechest.estimators.distill import expected_loss
from mechest.estimators.importance import check_units
from mechest.estimators.montecarlo import chunk_generator
from mechest.estimators.tail import check_layer, check_threshold, marginal_cumulants, saddlepoint_tail
from mechest.experiments.training import lr_factor
from mechest.flops import FlopCounter
from mechest.kprop import Scheme, propagate
from mechest.math.wick import activation_function
from mechest.mlp import MLP

CHANGE_TERMS = 48  # Hermite terms of the Mehler closure (plus the tail estimate)
MIN_PROBABILITY = 1e-12  # an event estimated rarer than this is "already ~0": nothing to suppress
LOG_FLOOR = 1e-300  # log p is taken of max(p, LOG_FLOOR)
PROJECTION_STEPS = 5
PROJECTION_MARGIN = 0.01  # Newton projection steps aim at c = 1 − this, so that the next step rarely re-violates
BISECTION_STEPS = 12
PILOT_SAMPLES = 1 << 14  # the sampled baseline's pilot sample (tr Cov M and the hinge's unit scale)
FINAL_BATCH = 1 << 14  # the sampled baseline's final check of the change

Term = Callable[[MLP, int], torch.Tensor]


@dataclass
class SuppressResult:
    """A fine-tuned network and what it cost. Probabilities are the saddlepoint estimates of the chosen units;
    ``function_change`` is the estimated E‖M' − M‖² / tr Cov M (the bound is ``max_change``). The probabilities
    are clipped to [0, 1] (a saddlepoint that falls back to Edgeworth can go negative); ``fallbacks`` counts the
    units whose final estimate fell back."""

    net: MLP
    method: str
    layer: int
    threshold: float
    upper: bool
    units: list[int]
    prob_before: torch.Tensor
    prob_after: torch.Tensor
    function_change: float
    max_change: float
    steps: int
    flops: int
    seconds: float
    projections: int = 0
    fallbacks: int = 0
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer, "threshold": self.threshold,
                "tail": "upper" if self.upper else "lower", "units": self.units,
                "prob_before": self.prob_before.tolist(), "prob_after": self.prob_after.tolist(),
                "function_change": self.function_change, "max_change": self.max_change, "steps": self.steps,
                "flops": int(self.flops), "seconds": self.seconds, "projections": self.projections,
                "fallbacks": self.fallbacks, "history": self.history}


def trainable_copy(net: MLP) -> MLP:
    """A copy of ``net`` whose weights and biases (zeros where it has none) are leaf tensors with gradients."""
    weights = [w.detach().clone().requires_grad_(True) for w in net.weights]
    biases = [(torch.zeros_like(w[:, 0]) if b is None else b.detach().clone()).requires_grad_(True)
              for w, b in zip(net.weights, net.biases)]
    return MLP(weights, biases, list(net.activations))


def parameters(net: MLP) -> list[torch.Tensor]:
    return list(net.weights) + [b for b in net.biases if b is not None]


def scheme_of(order: int, variant: str) -> Scheme:
    """The propagation suppress runs at (order, variant): κ_3 factored at K = 3."""
    return Scheme(order, variant, order == 3)


def detached(net: MLP) -> MLP:
    return MLP([w.detach().clone() for w in net.weights],
               [None if b is None else b.detach().clone() for b in net.biases], list(net.activations))


def saddlepoint_of_units(net: MLP, layer: int, threshold: float, units: list[int], upper: bool = True,
                         order: int = 3, variant: str = "simple") -> tuple[torch.Tensor, torch.Tensor]:
    """Saddlepoint P(s·(z_{L,i} − t) > 0) for ``units`` from the propagated marginal cumulants (differentiable,
    not clipped) and where the saddlepoint applied (elsewhere: Edgeworth). Only the chosen units' formulas are
    evaluated, so a fallback elsewhere cannot reach the gradient.
    """
    cumulants = marginal_cumulants(net, layer, scheme_of(order, variant))[:, units]
    return saddlepoint_tail(cumulants, threshold, upper)


def estimated_probability(net: MLP, layer: int, threshold: float, units: list[int], upper: bool = True,
                          order: int = 3, variant: str = "simple") -> torch.Tensor:
    """``saddlepoint_of_units``' probabilities (not clipped)."""
    return saddlepoint_of_units(net, layer, threshold, units, upper, order, variant)[0]


def tail_objective(net: MLP, layer: int, threshold: float, units: list[int], upper: bool = True,
                   order: int = 3, variant: str = "simple") -> torch.Tensor:
    """mean_i log p_i of ``estimated_probability``: the mechanistic training objective."""
    prob = estimated_probability(net, layer, threshold, units, upper, order, variant)
    return prob.clamp_min(LOG_FLOOR).log().mean()


def output_variance(net: MLP, order: int = 3, variant: str = "simple") -> float:
    """tr Cov M(x) by kprop at ``order`` (factored at K = 3)."""
    with torch.no_grad():
        return float(torch.trace(propagate(net, scheme_of(order, variant)).cov))


def estimated_change(net: MLP, reference: MLP) -> torch.Tensor:
    """The Mehler-closure estimate of E‖M'(x) − M(x)‖² for M' = ``net``, M = ``reference`` (differentiable)."""
    return expected_loss(net, reference, method="mehler", hermite_terms=CHANGE_TERMS, hermite_tail=True)


def counted(function: Callable[[], torch.Tensor], backward: bool) -> int:
    """FLOPs of one call of ``function`` (and of its backward pass if ``backward``); gradients are discarded."""
    with FlopCounter() as counter:
        value = function()
        if backward:
            value.backward()
    return counter.total


def assign(net: MLP, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for tensor, value in zip(parameters(net), values):
            tensor.copy_(value)


def bisect_back(net: MLP, start: list[torch.Tensor], change: Term, step: int) -> int:
    """Move ``net`` to start + α·(net − start) with the largest α in [0, 1] (by bisection) where change ≤ 1;
    returns the number of evaluations of ``change``."""
    end = [p.detach().clone() for p in parameters(net)]
    low, high = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        assign(net, [s + middle * (e - s) for s, e in zip(start, end)])
        with torch.no_grad():
            feasible = float(change(net, step)) <= 1.0
        low, high = (middle, high) if feasible else (low, middle)
    assign(net, [s + low * (e - s) for s, e in zip(start, end)])
    return BISECTION_STEPS


def project(net: MLP, start: list[torch.Tensor], change: Term, step: int) -> tuple[float, int, int]:
    """Bring ``net`` back to change ≤ 1 (module docstring). Returns (change, Newton checks, each charged as an
    evaluation with gradient, bisection evaluations)."""
    params = parameters(net)
    with_gradient = 0
    for _ in range(PROJECTION_STEPS):
        value = change(net, step)
        with_gradient += 1
        if float(value.detach()) <= 1.0:
            return float(value.detach()), with_gradient, 0
        gradients = torch.autograd.grad(value, params)
        squared = sum((g * g).sum() for g in gradients)
        if not squared > 0:
            break
        scale = (float(value.detach()) - 1.0 + PROJECTION_MARGIN) / squared
        with torch.no_grad():
            for tensor, gradient in zip(params, gradients):
                tensor -= scale * gradient
    without = bisect_back(net, start, change, step)
    with torch.no_grad():
        value = float(change(net, step))
    return value, with_gradient, without + 1


class NormalizedDescent(torch.optim.Optimizer):
    """Heavy-ball descent with steps of fixed Euclidean length: m ← β m + g, θ ← θ − lr · m / |m|, with |m| the
    norm over all parameters together (unlike Adam's per-coordinate scaling, this keeps the gradient's
    direction, so parameters the objective hardly depends on hardly move)."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.9) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            buffers = []
            for tensor in group["params"]:
                state = self.state[tensor]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(tensor)
                state["momentum"].mul_(group["momentum"])
                if tensor.grad is not None:  # None: a layer after the event's, which the tail does not reach
                    state["momentum"].add_(tensor.grad)
                buffers.append(state["momentum"])
            norm = torch.sqrt(sum((b * b).sum() for b in buffers))
            if norm > 0:
                for tensor, buffer in zip(group["params"], buffers):
                    tensor.sub_(group["lr"] * buffer / norm)


def optimise(net: MLP, tail: Term, change: Term, steps: int | None, lr: float, *, label: str,
             record: Callable[[MLP, int, int], dict], record_every: int, progress: bool,
             budget: int | None = None) -> tuple[int, int, float, list[dict]]:
    """``NormalizedDescent`` on ``tail`` with projection onto change ≤ 1 after every step, cosine decay to 1%.

    FLOPs are counted once per kind of evaluation (tail forward+backward, change forward, change
    forward+backward) and multiplied by how often each ran. With ``budget`` instead of ``steps``, the run has
    budget // (tail + change with gradient) steps and stops early if projections overspend. ``record(net, step,
    flops)`` returns a history entry (not counted). Returns (flops, steps whose projection moved the weights,
    final change, history).
    """
    if not lr > 0 or not math.isfinite(lr):
        raise MechestError(f"the learning rate must be positive, got {lr}")
    params = parameters(net)
    start = [p.detach().clone() for p in params]
    tail_flops = counted(lambda: tail(net, 0), backward=True)
    change_flops = counted(lambda: change(net, 0), backward=False)
    change_grad_flops = counted(lambda: change(net, 0), backward=True)
    for tensor in params:
        tensor.grad = None
    if budget is not None:
        steps = budget // (tail_flops + change_grad_flops)
        if steps < 1:
            raise MechestError(f"{label}: one step costs {tail_flops + change_grad_flops:.3g} FLOPs, more than the "
                               f"budget of {budget:.3g}; lower the batch size")
    if steps is None or steps < 1:
        raise MechestError(f"need at least one step, got {steps}")
    optimizer = NormalizedDescent(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor("cosine", step, steps))
    flops, moved, value = 0, 0, 0.0
    history = [record(net, 0, 0)]
    with tqdm(total=steps, desc=label, disable=None if progress else True, unit="step") as bar:
        for step in range(1, steps + 1):
            optimizer.zero_grad()
            loss = tail(net, step)
            loss.backward()
            if not torch.isfinite(loss.detach()) or not all(p.grad is None or torch.isfinite(p.grad).all()
                                                            for p in params):
                raise MechestError(f"{label}: the objective or its gradient became non-finite at step {step}; "
                                   "lower --lr")
            optimizer.step()
            schedule.step()
            value, graded, plain = project(net, start, change, step)
            moved += graded > 1 or plain > 0
            flops += tail_flops + graded * change_grad_flops + plain * change_flops
            last = step == steps or (budget is not None and flops + tail_flops + change_grad_flops > budget)
            if step % record_every == 0 or last:
                history.append(record(net, step, flops))
                bar.set_postfix(loss=f"{float(loss.detach()):.3g}", change=f"{value:.3f}")
            bar.update(1)
            if last:
                break
    return flops, moved, value, history


def resolve_units(net: MLP, layer: int, threshold: float, units: list[int] | None, upper: bool, order: int,
                  variant: str) -> tuple[list[int], torch.Tensor]:
    """The units to suppress and their estimated probabilities: ``units`` (each must have p ≥ MIN_PROBABILITY),
    or by default every unit of the layer whose p is at least MIN_PROBABILITY (at least one must be)."""
    width = net.weights[layer - 1].shape[0]
    chosen = list(range(width)) if units is None else check_units(units, width)
    with torch.no_grad():
        prob = estimated_probability(net, layer, threshold, chosen, upper, order, variant)
    event = f"z > {threshold:g}" if upper else f"z < {threshold:g}"
    negligible = [u for u, p in zip(chosen, prob.tolist()) if not p >= MIN_PROBABILITY]
    if units is not None and negligible:
        raise MechestError(f"P({event}) of unit {negligible[0]} at layer {layer} is already below "
                           f"{MIN_PROBABILITY:g} (estimated): nothing to suppress")
    keep = [i for i, u in enumerate(chosen) if u not in negligible]
    if not keep:
        raise MechestError(f"P({event}) is already below {MIN_PROBABILITY:g} (estimated) for every unit of layer "
                           f"{layer}: nothing to suppress; lower the threshold")
    return [chosen[i] for i in keep], prob[keep]


def check_settings(net: MLP, layer: int, threshold: float, max_change: float, order: int, variant: str) -> float:
    check_layer(net, layer)
    scheme_of(order, variant)
    if order < 2:
        raise MechestError("suppress needs order K >= 2 (K = 1 tracks no skewness, and no covariance for the change)")
    if not (max_change > 0 and math.isfinite(max_change)):
        raise MechestError(f"--max-change must be a positive number, got {max_change}")
    return check_threshold(threshold)


@dataclass(frozen=True)
class Event:
    """The rare events s·(z_{L,i} − t) > 0 for the chosen units, and the estimator of their probabilities."""

    layer: int
    threshold: float
    units: list[int]
    upper: bool
    order: int
    variant: str

    def probability(self, net: MLP) -> tuple[torch.Tensor, torch.Tensor]:
        """(saddlepoint probabilities, where the saddlepoint applied), differentiable."""
        return saddlepoint_of_units(net, self.layer, self.threshold, self.units, self.upper, self.order,
                                    self.variant)

    def objective(self, net: MLP) -> torch.Tensor:
        return tail_objective(net, self.layer, self.threshold, self.units, self.upper, self.order, self.variant)

    def clipped(self, net: MLP) -> torch.Tensor:
        with torch.no_grad():
            return self.probability(net)[0].clamp(0.0, 1.0)


Snapshot = Callable[[MLP, dict], None]


def recorder(event: Event, extra: Callable[[MLP, int, int], dict], on_record: Snapshot | None
             ) -> Callable[[MLP, int, int], dict]:
    """A history recorder: step, FLOPs, the clipped estimated probabilities and ``extra``; ``on_record(net copy,
    entry)`` is called with each entry (for verifying snapshots)."""

    def record(candidate: MLP, step: int, flops: int) -> dict:
        entry = {"step": step, "flops": flops, "prob": event.clipped(candidate).tolist(),
                 **extra(candidate, step, flops)}
        if on_record is not None:
            on_record(detached(candidate), entry)
        return entry

    return record


def result_of(tuned: MLP, method: str, event: Event, before: torch.Tensor, change: float, max_change: float,
              steps: int, flops: int, seconds: float, moved: int, history: list[dict]) -> SuppressResult:
    with torch.no_grad():
        after, valid = event.probability(tuned)
    return SuppressResult(detached(tuned), method, event.layer, event.threshold, event.upper, event.units,
                          before.clamp(0.0, 1.0), after.clamp(0.0, 1.0), change, max_change, steps, flops, seconds,
                          moved, int((~valid).sum()), history)


def suppress(net: MLP, layer: int, threshold: float, units: list[int] | None = None, *, lower: bool = False,
             max_change: float = 0.01, steps: int = 100, lr: float = 0.03, order: int = 3, variant: str = "simple",
             record_every: int = 10, progress: bool = False, on_record: Snapshot | None = None) -> SuppressResult:
    """Lower the estimated P(z_{L,i} > t) (``lower``: < t) of ``units`` of ``layer`` (default: all with
    p ≥ MIN_PROBABILITY) with the estimated E‖M' − M‖² ≤ ``max_change`` · tr Cov M (module docstring).

    ``steps`` steps of ``NormalizedDescent`` (step length ``lr``, cosine decay); ``history`` holds step, FLOPs,
    estimated probabilities and estimated change every ``record_every`` steps.
    """
    threshold = check_settings(net, layer, threshold, max_change, order, variant)
    reference = detached(net).to(dtype=torch.float64)
    chosen, before = resolve_units(reference, layer, threshold, units, not lower, order, variant)
    event = Event(layer, threshold, chosen, not lower, order, variant)
    start_time = time.perf_counter()
    scale = max_change * output_variance(reference, order, variant)
    tuned = trainable_copy(reference)

    def change(candidate: MLP, step: int) -> torch.Tensor:
        return estimated_change(candidate, reference) / scale

    def extra(candidate: MLP, step: int, flops: int) -> dict:
        with torch.no_grad():
            return {"change": float(change(candidate, step)) * max_change}

    flops, moved, value, history = optimise(tuned, lambda candidate, step: event.objective(candidate), change, steps,
                                            lr, label=f"suppress K={order} {variant}",
                                            record=recorder(event, extra, on_record), record_every=record_every,
                                            progress=progress)
    return result_of(tuned, "saddlepoint", event, before, value * max_change, max_change, steps, flops,
                     time.perf_counter() - start_time, moved, history)


def pre_activation_and_output(net: MLP, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z_{layer} (pre-activation, counted from 1) and the output of ``net`` for inputs x, from one forward pass."""
    h, chosen = x, x
    for index, (weight, bias) in enumerate(zip(net.weights, net.biases)):
        h = h @ weight.T if bias is None else h @ weight.T + bias
        if index + 1 == layer:
            chosen = h
        if index < net.depth:
            h = activation_function(net.activations[index])(h)
    return chosen, h


def gaussian_batch(net: MLP, seed: int, chunk: int, size: int) -> torch.Tensor:
    """``size`` inputs x ~ N(0, I) from the generator of chunk (seed, chunk)."""
    generator = chunk_generator(seed, chunk, net.device)
    return torch.randn(size, net.input_dim, generator=generator, dtype=net.dtype, device=net.device)


PILOT_CHUNK = 1 << 40  # chunk indices of the pilot and the final check: far above any step number
FINAL_CHUNK = PILOT_CHUNK + 1


def suppress_sampled(net: MLP, layer: int, threshold: float, units: list[int] | None = None, *,
                     budget: int, lower: bool = False, max_change: float = 0.01, margin: float = 1.0,
                     batch_size: int = 1024, lr: float = 0.03, seed: int = 0, order: int = 3,
                     variant: str = "simple", record_every: int = 10, progress: bool = False,
                     on_record: Snapshot | None = None) -> SuppressResult:
    """The sampled baseline (module docstring) with ``budget`` training FLOPs: as many steps on minibatches
    of ``batch_size`` as fit (each charged a tail forward+backward and one change evaluation with gradient),
    hinge offset δ_i = ``margin`` × the pilot standard deviation of z_{L,i}; the pilot and the final check are
    paid from the budget (a final bisection, if needed, on top of it). Units default as in ``suppress``;
    probabilities in the result and history are the saddlepoint estimates (evaluation only, not charged).
    """
    threshold = check_settings(net, layer, threshold, max_change, order, variant)
    if batch_size < 1 or not margin >= 0:
        raise MechestError(f"need batch_size >= 1 and margin >= 0, got {batch_size} and {margin}")
    sign = -1.0 if lower else 1.0
    reference = detached(net).to(dtype=torch.float64)
    chosen, before = resolve_units(reference, layer, threshold, units, not lower, order, variant)
    event = Event(layer, threshold, chosen, not lower, order, variant)
    start_time = time.perf_counter()
    with torch.no_grad():
        pilot_layer, pilot_output = pre_activation_and_output(reference, gaussian_batch(reference, seed, PILOT_CHUNK,
                                                                                        PILOT_SAMPLES), layer)
    pilot_flops = PILOT_SAMPLES * reference.flops_per_sample()
    scale = max_change * float(pilot_output.var(dim=0).sum())
    offset = margin * pilot_layer[:, chosen].std(dim=0)
    tuned = trainable_copy(reference)
    index = torch.tensor(chosen)

    def tail(candidate: MLP, step: int) -> torch.Tensor:
        z, _ = pre_activation_and_output(candidate, gaussian_batch(reference, seed, step, batch_size), layer)
        return torch.relu(sign * (z[:, index] - threshold) + offset).mean()

    def change_on(x: torch.Tensor, candidate: MLP) -> torch.Tensor:
        with torch.no_grad():
            target = reference(x)
        return ((candidate(x) - target) ** 2).sum(dim=1).mean() / scale

    def change(candidate: MLP, step: int) -> torch.Tensor:
        return change_on(gaussian_batch(reference, seed, step, batch_size), candidate)

    def extra(candidate: MLP, step: int, flops: int) -> dict:
        return {"flops": flops + pilot_flops}

    label = f"sampled, batch {batch_size}, margin {margin:g}"
    final_flops = FINAL_BATCH * 2 * reference.flops_per_sample()
    if budget <= pilot_flops + final_flops:
        raise MechestError(f"a budget of {budget:.3g} FLOPs does not cover the pilot sample and the final check "
                           f"({pilot_flops + final_flops:.3g} FLOPs)")
    flops, moved, value, history = optimise(tuned, tail, change, None, lr, label=label,
                                            record=recorder(event, extra, on_record),
                                            record_every=record_every, progress=progress,
                                            budget=budget - pilot_flops - final_flops)
    final = gaussian_batch(reference, seed, FINAL_CHUNK, FINAL_BATCH)
    flops += pilot_flops + final_flops
    with torch.no_grad():
        value = float(change_on(final, tuned))
    if value > 1.0:
        evaluations = bisect_back(tuned, [p.detach().clone() for p in parameters(trainable_copy(reference))],
                                  lambda candidate, step: change_on(final, candidate), 0)
        flops += evaluations * FINAL_BATCH * reference.flops_per_sample()
        with torch.no_grad():
            value = float(change_on(final, tuned))
    return result_of(tuned, f"hinge, margin {margin:g}", event, before, value * max_change, max_change,
                     history[-1]["step"], flops, time.perf_counter() - start_time, moved, history)
