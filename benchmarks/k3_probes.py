"""Negative and diagnostic probes of issue 15 on the three warm-up nets (256×8, float64 torch), reported in
docs/results.md ("Beyond the reference"). They replace one executor function for the duration of a run:

- ``basis``: the compressed sources' basis from the range finder (the executor's) against the exact truncated SVD
  of the stacked factors, normalised or not: how much a better basis could recover;
- ``kappa4``: κ_4's trace-piece core multiplied by λ (the derived value is λ = 1): whether a multiple of the
  fourth cumulant is a lever in this scheme;
- ``dead`` (phase-2 net 0, 1024×16): how many units per layer a Gaussian propagation of means and covariances
  (the executor's K = 2 simple) finds more than t standard deviations below zero: what dead-unit pruning could
  drop.

    PYTHONPATH=src python benchmarks/k3_probes.py basis
    PYTHONPATH=src python benchmarks/k3_probes.py kappa4
    PYTHONPATH=src python benchmarks/k3_probes.py dead
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mechest.kprop import executor as xprop
from mechest.kprop.executor import propagation, source_compression
from mechest.kprop.spec import executor_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k3_research import network, run_means  # the harness's nets and run


@contextmanager
def replaced(module, name: str, function):
    """``module.name`` (the executor module that calls it) replaced by ``function`` for the duration."""
    original = getattr(module, name)
    setattr(module, name, function)
    try:
        yield
    finally:
        setattr(module, name, original)


def warmup_mse(compression: xprop.Compression | None) -> float:
    """Mean final-layer MSE over the three warm-up nets, noise floor subtracted."""
    spec = executor_spec(3, "simple", max_width=256)
    errors = []
    for index in range(3):
        weights, truth, floor = network("warmup", index)
        means = run_means(weights, spec, torch.float64, xprop.PlanOptions(compression=compression))
        errors.append(float(np.mean((means[-1] - truth[-1]) ** 2)) - floor)
    return float(np.mean(errors))


def svd_basis(normalise: bool):
    def compressed_source(xp, factors, rank, power):
        blocks = [factors[:, j] / torch.linalg.norm(factors[:, j]) if normalise else factors[:, j]
                  for j in range(factors.shape[1])]  # the factors T, P, Q as (n, 3, m)
        basis = torch.linalg.svd(torch.cat(blocks, dim=1), full_matrices=False)[0][:, :rank]
        return basis, xp.einsum("nr,njk->jrk", basis, factors)
    return compressed_source


def probe_basis() -> None:
    for age, rank, power in ((2, 64, 0), (2, 64, 1), (1, 64, 1), (4, 32, 0)):
        compression = xprop.Compression(age, rank, power)
        row = {"range finder": warmup_mse(compression)}
        for label, normalise in (("svd normalised", True), ("svd raw", False)):
            with replaced(source_compression, "compressed_source", svd_basis(normalise)):
                row[label] = warmup_mse(compression)
        print(f"age {age} rank {rank} power {power}: " + ", ".join(f"{k} {v:.3e}" for k, v in row.items()), flush=True)


def probe_kappa4() -> None:
    original = xprop.projected_cores
    for scale in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        def scaled(spec, cumulants, n, scale=scale):
            return {d: scale * c if d == 4 else c for d, c in original(spec, cumulants, n).items()}
        with replaced(propagation, "projected_cores", scaled):
            print(f"kappa4 core x {scale}: {warmup_mse(None):.3e}", flush=True)


def probe_dead() -> None:
    weights = [torch.as_tensor(w, dtype=torch.float64) for w in network("phase2", 0)[0]]
    backend = xprop.Backend(torch, torch.special.ndtr)
    result = xprop.covariance(backend, xprop.relu_layers(weights[:-1]))
    pre_means = [weights[0].new_zeros(weights[0].shape[0])]
    pre_vars = [(weights[0] ** 2).sum(1)]
    for weight, mean, cov in zip(weights[1:], result.layer_means, result.layer_covs):
        pre_means.append(weight @ mean)
        pre_vars.append(torch.einsum("ij,jk,ik->i", weight, cov, weight))
    width = weights[0].shape[0]
    for threshold in (3, 4, 5, 6, 8):
        counts = [int((mean < -threshold * var.sqrt()).sum()) for mean, var in zip(pre_means, pre_vars)]
        print(f"t = {threshold}: per layer {counts}, mean fraction {sum(counts) / (len(counts) * width):.3f}",
              flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"basis": probe_basis, "kappa4": probe_kappa4, "dead": probe_dead}[sys.argv[1]]()
