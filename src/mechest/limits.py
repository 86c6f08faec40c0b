"""Refusing what cannot give an answer: results that overflowed to a non-finite value, and sample counts that
could not finish.

Each check raises a one-line MechestError that says where the problem is, so the command-line tool exits 2
instead of printing NaN or writing it to a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from mechest.errors import MechestError
from mechest.kprop.result import Propagation

MAX_SAMPLES = 10**15
"""The most Monte Carlo samples accepted for any network (about 1.5e10 chunks of 65536)."""
FAST_FLOP_RATE = 1e15
"""FLOP/s: a petaFLOP/s, more than a Monte Carlo forward pass sustains on any one machine, so the estimated time
below is a lower bound."""
MAX_SECONDS = 365.25 * 24 * 3600
"""The longest estimated run accepted: a year at FAST_FLOP_RATE."""

Quantity = tuple[str, str, torch.Tensor]
"""(what, where, value), e.g. ("variance", "hidden layer 2", the diagonal of that layer's covariance)."""


def is_finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all())


def require_all_finite(method: str, quantities: Iterable[Quantity]) -> None:
    """A MechestError naming the first non-finite quantity of ``quantities`` (in the order given: layer by
    layer), if there is one."""
    for what, where, quantity in quantities:
        if not is_finite(quantity):
            raise MechestError(f"{method}: the {what} of {where} is not finite (overflow?)")


def require_finite(method: str, value: torch.Tensor, quantities: Iterable[Quantity]) -> None:
    """Return if ``value`` (a result) is finite; else a MechestError naming the first non-finite quantity of
    ``quantities`` (what it was computed from), or the result itself if they are all finite."""
    if not is_finite(value):
        require_all_finite(method, quantities)
        raise MechestError(f"{method}: the result is not finite (overflow?)")


def hidden_quantities(result: Propagation, layers: int | None = None) -> Iterator[Quantity]:
    """Mean, variance and covariance of the first ``layers`` hidden activations (None: all) of a propagation."""
    pairs = list(zip(result.layer_means, result.layer_covs, strict=True))[:layers]
    for layer, (mean, cov) in enumerate(pairs, start=1):
        yield "mean", f"hidden layer {layer}", mean
        yield "variance", f"hidden layer {layer}", torch.diagonal(cov)
        yield "covariance", f"hidden layer {layer}", cov


def output_quantities(result: Propagation) -> Iterator[Quantity]:
    """Mean, variance, covariance and (where tracked) third cumulant of the output of a propagation."""
    yield "mean", "the output", result.mean
    yield "variance", "the output", torch.diagonal(result.cov)
    yield "covariance", "the output", result.cov
    if result.third is not None:
        yield "third cumulant", "the output", result.third


def require_finite_propagation(result: Propagation) -> None:
    """Every propagated cumulant must be finite (one that overflowed makes the rest unreliable, even where a
    saturating activation hides it); else a MechestError naming the first layer and quantity that is not."""
    require_all_finite("kprop", [*hidden_quantities(result), *output_quantities(result)])


def forward_quantities(layers: list[torch.Tensor]) -> Iterator[Quantity]:
    """The values of every layer of a forward pass (``MLP.forward_layers``), then the output's squares (whose
    overflow makes the sample variance infinite)."""
    places = [f"hidden layer {layer}" for layer in range(1, len(layers))] + ["the output"]
    for where, values in zip(places, layers, strict=True):
        yield "value", where, values
    yield "variance", "the output", layers[-1] * layers[-1]


def duration(seconds: float) -> str:
    """``seconds`` in the largest of seconds, hours, days or years that is at least 1."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} seconds"


def check_sample_time(samples: int, flops_per_sample: int) -> int:
    """``samples``, unless they exceed MAX_SAMPLES or samples × flops_per_sample / FAST_FLOP_RATE exceeds
    MAX_SECONDS: then a MechestError giving that estimated time and the largest count accepted."""
    seconds = samples * flops_per_sample / FAST_FLOP_RATE
    estimate = f"{samples:.3g} samples of {flops_per_sample:,} FLOPs each would take at least {duration(seconds)} " \
               f"(at {FAST_FLOP_RATE:.0e} FLOP/s)"
    if seconds > MAX_SECONDS:
        largest = min(MAX_SAMPLES, int(MAX_SECONDS * FAST_FLOP_RATE / flops_per_sample))
        raise MechestError(f"{estimate}; this network accepts at most {largest:.3g} samples")
    if samples > MAX_SAMPLES:
        raise MechestError(f"{estimate}, but at most {MAX_SAMPLES:.0e} samples are accepted")
    return samples
