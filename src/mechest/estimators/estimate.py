"""The entry point: ``estimate(net, method=...)`` and the result object it returns."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mechest.device import resolve_device, synchronize
from mechest.errors import MechestError
from mechest.estimators.budget import choose_scheme
from mechest.estimators.montecarlo import check_sample_count, sample_moments
from mechest.flops import FlopCounter
from mechest.kprop import Propagation, Scheme, propagate
from mechest.kprop.run import prepare
from mechest.limits import check_propagation_memory, require_finite_propagation
from mechest.mlp import MLP

METHODS = ("kprop", "mc")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Estimate:
    """An estimate of E[M(x)], x ~ N(0, I), per output coordinate, and what it cost.

    For Monte Carlo ``stderr`` = sqrt(variance / samples) and ``variance`` is the per-coordinate sample
    variance. For kprop ``scheme`` is the scheme run, ``cov`` the output covariance as propagated by it (asked for
    with ``estimate(..., cov=True)``, else None) and ``third`` the output's dense third cumulant tensor where an
    unfactorised K ≥ 3 scheme tracks it (else None). FLOPs follow mechest.flops (counted in the run; None for an
    uncounted run; random-number generation is not counted).
    """

    method: str
    mean: torch.Tensor
    flops: int | None
    seconds: float
    scheme: Scheme | None = None
    cov: torch.Tensor | None = None
    third: torch.Tensor | None = None
    stderr: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    samples: int | None = None

    def to_dict(self) -> dict:
        """The JSON-ready summary printed by ``mechest estimate --json``."""
        record: dict = {"method": self.method, "mean": self.mean.tolist(), "flops": self.flops,
                        "seconds": self.seconds}
        if self.method == "kprop":
            record.update(scheme=self.scheme.to_dict(), **self.scheme.to_dict())
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
    scheme: Scheme | None = None,
    budget: float | None = None,
    samples: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    count: bool = True,
    cov: bool = False,
) -> Estimate:
    """Estimate the expected output of ``net`` under standard Gaussian input.

    - ``method="kprop"``: cumulant propagation at ``scheme`` (a mechest.kprop.Scheme; by default the one made of
      ``order`` 1..4, ``variant`` "simple"/"augment" and ``factored``, see mechest.kprop.SCHEMES), or with
      ``budget`` (FLOPs) the scheme predicted to be most accurate within it (mechest.estimators.budget.choose_scheme).
      float64 unless ``dtype`` says otherwise. Differentiable with respect to the weights. One run, its FLOPs
      counted as it goes (mechest.flops; ``count=False`` runs it uncounted, ``flops`` None, for clean timings).
      ``cov=True`` also returns the output covariance (``.cov``), which costs the last layers more work.
    - ``method="mc"``: Monte Carlo with ``samples`` inputs drawn from ``seed``, streamed in chunks of
      ``chunk_size`` (None: sized to the device's memory on CUDA).

    Both run on ``device``: "cpu", "cuda", "auto" (CUDA when available) or None (where ``net`` is); the
    returned tensors stay there. ``seconds`` is wall-clock time up to the device's last kernel.
    """
    device = resolve_device(device, net.device)
    if method == "kprop":
        if samples is not None:
            raise MechestError("a sample count (--samples) is for method mc; kprop draws no samples")
        net = net.to(dtype=resolve_dtype(dtype, torch.float64), device=device)
        if budget is not None:
            scheme = choose_scheme(net, budget, "cov" if cov else "mean")
        return kprop_estimate(net, scheme if scheme is not None else Scheme(order, variant, factored), count, cov)
    if method == "mc":
        if samples is None:
            raise MechestError("method 'mc' needs a sample count (samples=...)")
        return monte_carlo_estimate(net.to(dtype=resolve_dtype(dtype, net.dtype), device=device), samples, seed,
                                    chunk_size, progress)
    raise MechestError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def counted_propagation(net: MLP, scheme: Scheme, count: bool = True,
                        outputs: str = "cov") -> tuple[Propagation, int | None, float]:
    """One propagation of ``net`` at ``scheme`` (``outputs`` as in mechest.kprop.propagate): (result, FLOPs counted
    as it runs or None without ``count``, wall-clock seconds)."""
    prepare(net, scheme)
    synchronize(net.device)
    start = time.perf_counter()
    counter = FlopCounter() if count else nullcontext()
    with counter:
        result = propagate(net, scheme, outputs)
    synchronize(net.device)
    return result, counter.total if count else None, time.perf_counter() - start


def kprop_estimate(net: MLP, scheme: Scheme, count: bool = True, cov: bool = False) -> Estimate:
    """Cumulant propagation on ``net``'s dtype and device, run once (and counted as it runs); the output covariance
    only with ``cov``."""
    check_propagation_memory(net.dims, scheme, net.dtype, net.device)
    result, flops, seconds = counted_propagation(net, scheme, count, "cov" if cov else "mean")
    require_finite_propagation(result)
    return Estimate("kprop", result.mean, flops, seconds, scheme=scheme, cov=result.cov, third=result.third)


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
