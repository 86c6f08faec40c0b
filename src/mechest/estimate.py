"""The entry point: ``estimate(net, method=...)`` and the result object it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mechest.device import resolve_device, synchronize
from mechest.errors import MechestError
from mechest.flops import FlopCounter, warm_up
from mechest.kprop import check_options, propagate
from mechest.kprop.plan import compile_plan
from mechest.mlp import MLP
from mechest.montecarlo import check_sample_count, sample_moments

METHODS = ("kprop", "mc")
_FLOP_CACHE: dict[tuple, int] = {}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Estimate:
    """An estimate of E[M(x)], x ~ N(0, I), per output coordinate, and what it cost.

    For Monte Carlo ``stderr`` = sqrt(variance / samples) and ``variance`` is the per-coordinate sample
    variance; for kprop ``cov`` is the output covariance as propagated at that order and ``third`` the
    output's third cumulant tensor (orders K ≥ 3, else None).
    FLOPs follow mechest.flops (random-number generation is not counted).
    """

    method: str
    mean: torch.Tensor
    flops: int
    seconds: float
    order: int | None = None
    variant: str | None = None
    factored: bool = False
    cov: torch.Tensor | None = None
    third: torch.Tensor | None = None
    stderr: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    samples: int | None = None

    def to_dict(self) -> dict:
        """The JSON-ready summary printed by ``mechest estimate --json``."""
        record: dict = {"method": self.method, "mean": self.mean.tolist(), "flops": int(self.flops),
                        "seconds": self.seconds}
        if self.method == "kprop":
            record.update(order=self.order, variant=self.variant, factored=self.factored)
        else:
            record.update(stderr=self.stderr.tolist(), samples=self.samples)
        return record


def resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype) -> torch.dtype:
    """Accept a torch dtype or one of the names in DTYPES."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise MechestError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def estimate(
    net: MLP,
    method: str = "kprop",
    *,
    order: int = 2,
    variant: str = "simple",
    factored: bool = False,
    samples: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Estimate:
    """Estimate the expected output of ``net`` under standard Gaussian input.

    - ``method="kprop"``: cumulant propagation to order ``order`` (1..4) in ``variant`` "simple" or
      "augment"; float64 unless ``dtype`` says otherwise. Differentiable with respect to the weights.
      ``factored=True`` carries the top cumulant factored (docs/method.md §7; K = 3 both variants, K = 4 simple).
    - ``method="mc"``: Monte Carlo with ``samples`` inputs drawn from ``seed``, streamed in chunks of
      ``chunk_size`` (None: sized to the device's memory on CUDA).

    Both run on ``device``: "cpu", "cuda", "auto" (CUDA when available) or None (where ``net`` is); the
    returned tensors stay there. ``seconds`` is wall-clock time up to the device's last kernel.
    """
    device = resolve_device(device, net.device)
    if method == "kprop":
        return kprop_estimate(net.to(dtype=resolve_dtype(dtype, torch.float64), device=device), order, variant,
                              factored)
    if method == "mc":
        if samples is None:
            raise MechestError("method 'mc' needs a sample count (samples=...)")
        return monte_carlo_estimate(net.to(dtype=resolve_dtype(dtype, net.dtype), device=device), samples, seed,
                                    chunk_size, progress)
    raise MechestError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def kprop_estimate(net: MLP, order: int, variant: str, factored: bool) -> Estimate:
    """Cumulant propagation on ``net``'s dtype and device: timed on its own, with FLOPs counted on a
    structurally identical run."""
    check_options(order, variant)
    if order >= 2:
        compile_plan(order, variant, "factored" if factored else "full")  # one-time enumeration, not part of a run
    synchronize(net.device)
    start = time.perf_counter()
    result = propagate(net, order, variant, factored)
    synchronize(net.device)
    seconds = time.perf_counter() - start
    flops = kprop_flops(structure_key(net), order, variant, factored, net)
    return Estimate("kprop", result.mean, flops, seconds, order=order, variant=variant, factored=factored,
                    cov=result.cov, third=result.third)


def structure_key(net: MLP) -> tuple:
    """What the operations of a propagation depend on: shapes, activations, which layers have biases, dtype."""
    return (tuple(net.dims), tuple(net.activations), tuple(b is not None for b in net.biases), net.dtype,
            str(net.device))


def kprop_flops(key: tuple, order: int, variant: str, factored: bool, net: MLP) -> int:
    """FLOPs of propagating ``net`` at (order, variant), counted once per network structure.

    The operations run by the propagation depend only on the structure (never on the weight values), so one
    counted run serves every network of the same structure. Counting is kept out of the timed run because
    the dispatch mode that counts adds tens of microseconds per operation.
    """
    cache_key = (key, order, variant, factored)
    if cache_key not in _FLOP_CACHE:
        warm_up()
        with FlopCounter() as counter:
            propagate(net, order, variant, factored)
        _FLOP_CACHE[cache_key] = counter.total
    return _FLOP_CACHE[cache_key]


def monte_carlo_estimate(net: MLP, samples: int, seed: int, chunk_size: int | None, progress: bool) -> Estimate:
    """Streaming Monte Carlo on ``net``'s dtype and device; FLOPs = samples × one forward pass (docs/method.md §9)."""
    samples = check_sample_count(samples)
    synchronize(net.device)
    start = time.perf_counter()
    moments = sample_moments(net, samples, seed, chunk_size=chunk_size, progress=progress)
    synchronize(net.device)
    seconds = time.perf_counter() - start
    variance = moments.variance
    return Estimate(
        "mc", moments.mean, samples * net.flops_per_sample(), seconds,
        stderr=torch.sqrt(variance / samples), variance=variance, samples=samples,
    )
