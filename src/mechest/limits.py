"""Refusing what cannot give an answer: results that overflowed to a non-finite value, sample counts that
could not finish, and requests too large for memory (refused before allocating, saying what would fit).

Each check raises a one-line MechestError that says where the problem is, so the command-line tool exits 2
instead of printing NaN or writing it to a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from typing import TYPE_CHECKING

import torch

from mechest.errors import MechestError

if TYPE_CHECKING:
    from mechest.kprop.result import Propagation
    from mechest.kprop.scheme import Scheme

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
    """Whether every entry of ``value`` is finite: its sum is where they are (a NaN or infinite entry makes the sum
    NaN or infinite), so entry by entry only where the sum is not (finite entries whose sum overflows)."""
    return bool(torch.isfinite(value.detach().sum())) or bool(torch.isfinite(value).all())


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


def moment_quantities(where: str, mean: torch.Tensor, cov: torch.Tensor | None) -> Iterator[Quantity]:
    """Mean, variance and covariance of one layer; ``cov`` is a matrix, a variance (K = 1's trace part c), or
    None where the propagation did not compute it."""
    yield "mean", where, mean
    if cov is not None and cov.ndim == 2:
        yield "variance", where, torch.diagonal(cov)
        yield "covariance", where, cov
    elif cov is not None:
        yield "variance", where, cov


def hidden_quantities(result: Propagation, layers: int | None = None) -> Iterator[Quantity]:
    """Mean, variance and covariance of the first ``layers`` hidden activations (None: all) of a propagation
    (a Propagation or the executor's Cumulants)."""
    pairs = list(zip(result.layer_means, result.layer_covs, strict=True))[:layers]
    for layer, (mean, cov) in enumerate(pairs, start=1):
        yield from moment_quantities(f"hidden layer {layer}", mean, cov)


def output_quantities(result: Propagation) -> Iterator[Quantity]:
    """Mean, variance, covariance (where computed) and third cumulant (where tracked) of a propagation's output."""
    yield from moment_quantities("the output", result.mean, result.cov)
    if result.third is not None:
        yield "third cumulant", "the output", result.third


def require_finite_propagation(result: Propagation) -> None:
    """Every propagated mean and covariance (and the output's third cumulant) must be finite: one that overflowed
    makes the rest unreliable, even where a saturating activation hides it. Else a MechestError naming the first
    layer and quantity that is not."""
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


PROPAGATION_NUMBERS: dict[tuple[int, str, bool], tuple[float, float, int]] = {
    (1, "simple", False): (2, 0, 2), (1, "augment", False): (2, 0, 2), (1, "isotropic", False): (2, 0, 2),
    (2, "simple", False): (10, 0, 2), (2, "augment", False): (48, 8, 2),
    (3, "simple", False): (16, 0, 3), (3, "augment", False): (16, 0, 3),
    (3, "simple", True): (16, 36, 2), (3, "closure", True): (40, 36, 2), (3, "augment", True): (6, 0.5, 3),
    (4, "simple", False): (16, 0, 4), (4, "augment", False): (16, 0, 4),
    (4, "simple", True): (0, 36, 3),
}
"""(a, b, p): a propagation of width n and depth L holds at most about (a + b·L)·n^p numbers at once. Measured
as the peak resident memory of mechest.kprop.propagate (outputs="cov") on He-init ReLU nets, n = 24…800,
L = 1…8, rounded up: e.g. the dense engine's κ_K and its temporaries take 8–16 n^K numbers, the executor's
K = 2 augment 55–70 n² and factored K = 3 simple 70–120 n² at L = 2…4; K = 3 closure 14–24 n² more than K = 3
simple (46–94 n² at n = 512, 800, L = 2…6, peak resident memory above the network's)."""


def propagation_bytes(width: int, depth: int, order: int, variant: str, factored: bool, itemsize: int = 8) -> float:
    """Estimated peak bytes of propagating a network of largest width ``width`` and ``depth`` hidden layers."""
    a, b, power = PROPAGATION_NUMBERS[(order, variant, factored and order >= 3)]
    return (a + b * max(depth, 1)) * float(width) ** power * itemsize


def network_bytes(dims: list[int], itemsize: int = 8) -> float:
    """Bytes of the weights and biases of a network whose layer widths are ``dims`` (input first)."""
    return float(sum(fan_in * fan_out + fan_out for fan_in, fan_out in pairwise(dims))) * itemsize


def available_memory(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or MemAvailable of /proc/meminfo on the CPU (the physical memory where
    that file does not exist); None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def gigabytes(size: float) -> str:
    return f"{size / 1e9:.3g} GB"


def largest_fitting(size_of: Callable[[int], float], available: float, upper: int) -> int:
    """The largest width w in 0..``upper`` with size_of(w) ≤ available (size_of increasing), by bisection."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if size_of(middle) <= available else (low, middle - 1)
    return low


def check_propagation_memory(dims: list[int], scheme: Scheme, dtype: torch.dtype, device: torch.device) -> None:
    """A MechestError before propagating if the estimated peak memory exceeds what is available, naming what
    would fit: --factored, --variant simple, a smaller order K, or a smaller width."""
    order, variant, factored = scheme.order, scheme.variant, scheme.factored
    if (order, variant, factored) not in PROPAGATION_NUMBERS:
        return  # a scheme whose memory was not measured
    available = available_memory(device)
    width, depth, itemsize = max(dims), len(dims) - 2, dtype.itemsize
    needed = propagation_bytes(width, depth, order, variant, factored, itemsize)
    if available is None or needed <= available:
        return
    fits = []
    if not factored and (order, variant, True) in PROPAGATION_NUMBERS:
        factored_bytes = propagation_bytes(width, depth, order, variant, True, itemsize)
        if factored_bytes <= available:
            fits.append(f"--factored ({gigabytes(factored_bytes)})")
    if variant == "augment" and (order, "simple", factored) in PROPAGATION_NUMBERS:
        simple_bytes = propagation_bytes(width, depth, order, "simple", factored, itemsize)
        if simple_bytes <= available:
            fits.append(f"--variant simple ({gigabytes(simple_bytes)})")
    smaller = [k for k in range(order - 1, 0, -1) if (k, variant, factored and k >= 3) in PROPAGATION_NUMBERS
               and propagation_bytes(width, depth, k, variant, factored, itemsize) <= available]
    if smaller:
        fits.append(f"--order {smaller[0]}")
    narrowest = largest_fitting(lambda n: propagation_bytes(n, depth, order, variant, factored, itemsize),
                                available, width)
    fits.append(f"a width of at most {narrowest}" if narrowest else "a smaller network")
    raise MechestError(f"kprop {scheme} at width {width} needs about {gigabytes(needed)} of memory, but "
                       f"{gigabytes(available)} is available; what would fit: {', '.join(fits)}")


def check_network_memory(dims_of: Callable[[int], list[int]], width: int, itemsize: int = 8) -> None:
    """A MechestError before allocating the weights of a network of widths ``dims_of(width)`` (input first) if
    they exceed the available memory, naming the largest width that fits."""
    available = available_memory(torch.device("cpu"))
    needed = network_bytes(dims_of(width), itemsize)
    if available is None or needed <= available:
        return
    narrowest = largest_fitting(lambda n: network_bytes(dims_of(n), itemsize), available, width)
    raise MechestError(f"a width-{width} network ({len(dims_of(width)) - 1} linear maps) needs about "
                       f"{gigabytes(needed)} for its weights, but {gigabytes(available)} of memory is available; "
                       f"a width of at most {narrowest} fits")
