"""Probe of K = 3 AUGMENT's κ_4 core (issue 15; docs/results.md, "Which augment terms matter"): run a hybrid plan of
benchmarks/augment_ablation.py and replace the n×n core G of κ_4 = Sym(G ⊗ I) after every nonlinear step by a
cheaper model of it, to see which part of G carries the gain.

    PYTHONPATH=src python benchmarks/augment_core_probe.py --config core --models full diag rank1 rank4

Models: ``full`` (G itself), ``diag`` (its diagonal only), ``diagmean`` (diagonal plus the mean off-diagonal
entry everywhere off the diagonal), ``rankK`` (diagonal plus the K eigenpairs of largest |λ| of the off-diagonal
part), ``zero`` (G = 0), ``closureS`` (the closure of docs/method.md §7.9: diagonal plus λ·Σ_off, Σ the
activations' covariance, λ = S·tr G / tr Σ), ``carriedS`` (``closureS`` plus the carried response c·S H S of the
pre-activations' core H, ``carried``). Also prints the off-diagonal part's spectrum (share of ‖G_off‖²_F in
the top eigenpairs). ``--exact-steps k`` keeps G itself after the first k nonlinear steps and models it after
the later ones. ``--fit`` prints, per net and step, how much of the exact ‖G_off‖² a least-squares fit on Σ_off
explains (R² = 1 − ‖residual‖²/‖G_off‖², uncentred: the fits have no constant term) and its multiple in units of tr
G / tr Σ, alone and together with the carried response (``carried``).

    PYTHONPATH=src python benchmarks/augment_core_probe.py --config core+two:all --models closure1.5 --exact-steps 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

import mechest
from mechest.estimators.truth import score
from mechest.experiments.bench import find_truth
from mechest.kprop import factored
from mechest.math.tensors.harmonic import HTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_ablation import TRUTHS, hybrid_plan, run  # noqa: E402

ORIGINAL = factored.factored_nonlinear_step
SPECTRA: list = []
FITS: list = []


def carried(state: factored.FactoredState) -> torch.Tensor | None:
    """The linear response of the pre-activations' κ_4 core H (metric M) to the step: c·S H S, S = diag(E[φ'(z)])
    for ReLU (Φ(μ/σ)), c = Σ_k S_kk² M_kk / n; None before any κ_4 (the first layer)."""
    piece = state.tower.get(4)
    if piece is None or piece.r != 1 or piece.core.ndim != 2:
        return None
    mean, variance = state.tower[1].core, torch.diagonal(state.tower[2].core)
    slope = 0.5 * torch.erfc(-mean / torch.sqrt(2 * variance))
    metric = torch.ones_like(slope) if piece.metric is None else torch.diagonal(piece.metric)
    return (slope**2 * metric).mean() * slope[:, None] * piece.core * slope[None, :]


def modelled(core: torch.Tensor, model: str, cov: torch.Tensor, response: torch.Tensor | None) -> torch.Tensor:
    diagonal = torch.diag(torch.diagonal(core))
    off = core - diagonal
    n = core.shape[0]
    if model == "full":
        return core
    if model == "zero":
        return torch.zeros_like(core)
    if model == "diag":
        return diagonal
    if model == "diagmean":
        return diagonal + off.sum() / (n * (n - 1)) * (torch.ones_like(core) - torch.eye(n, dtype=core.dtype))
    if model.startswith("carried"):  # the closure for what the carried response leaves
        base = torch.zeros_like(core) if response is None else off_diag(response)
        multiple = float(model[len("carried"):]) * torch.trace(core) / torch.trace(cov)
        return diagonal + base + multiple * off_diag(cov)
    if model.startswith("closure"):
        multiple = float(model[len("closure"):]) * torch.trace(core) / torch.trace(cov)
        return diagonal + multiple * off_diag(cov)
    if model.startswith("rank"):
        k = int(model[4:])
        values, vectors = torch.linalg.eigh(off)
        top = torch.argsort(values.abs(), descending=True)[:k]
        return diagonal + off_diag((vectors[:, top] * values[top]) @ vectors[:, top].T)
    raise ValueError(model)


def off_diag(matrix: torch.Tensor) -> torch.Tensor:
    return matrix - torch.diag(torch.diagonal(matrix))


def fitted(core: torch.Tensor, cov: torch.Tensor, response: torch.Tensor | None) -> dict:
    """R² and coefficients of least-squares fits of G_off on Σ_off (in units of tr G / tr Σ) and on
    (Σ_off, the carried response's off-diagonal)."""
    mask = ~torch.eye(core.shape[0], dtype=torch.bool)
    target = core[mask].numpy()
    unit = float(torch.trace(core) / torch.trace(cov))
    features = {"sigma": cov[mask].numpy() * unit}
    if response is not None:
        features["carried"] = response[mask].numpy()
    out = {}
    for names in (["sigma"], list(features)):
        design = np.stack([features[name] for name in names], axis=1)
        coefficients = np.linalg.lstsq(design, target, rcond=None)[0]
        r2 = 1 - float(((target - design @ coefficients) ** 2).sum() / (target**2).sum())
        out["+".join(names)] = {"r2": round(r2, 3), "coefficients": np.round(coefficients, 3).tolist()}
    return out


def patched(model: str, exact_steps: int):
    steps = [0]

    def step(state, activation, plan):
        out = ORIGINAL(state, activation, plan)
        piece = out.tower.get(4)
        steps[0] += 1
        if piece is not None and piece.r == 1:
            FITS.append({"step": steps[0], **fitted(piece.core, out.tower[2].core, carried(state))})
        if piece is None or piece.r != 1 or steps[0] <= exact_steps:
            return out
        off = off_diag(piece.core)
        values = torch.linalg.eigvalsh(off)
        share = (values**2).sort(descending=True).values.cumsum(0) / (values**2).sum()
        SPECTRA.append([float(share[k - 1]) for k in (1, 2, 4, 8, 16)]
                       + [float(torch.linalg.norm(off) / torch.linalg.norm(torch.diagonal(piece.core)))])
        tower = dict(out.tower)
        tower[4] = HTensor(modelled(piece.core, model, out.tower[2].core, carried(state)), piece.r, piece.metric,
                           n=piece.n)
        return factored.FactoredState(tower, out.third)
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="core")
    parser.add_argument("--models", nargs="+", default=["full", "diag"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--exact-steps", type=int, nargs="+", default=[0])
    parser.add_argument("--fit", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = hybrid_plan(args.config)
    nets = [mechest.random_mlp(256, 4, "relu", seed=s) for s in args.seeds]
    truths = [find_truth(net, 10**8, [TRUTHS]) for net in nets]
    for model, exact_steps in itertools.product(args.models, args.exact_steps):
        SPECTRA.clear()
        errors = []
        for net, truth in zip(nets, truths, strict=True):
            factored.factored_nonlinear_step = patched(model, exact_steps)  # a fresh step count per net
            FITS.clear()
            errors.append(score(run(net, plan).double(), truth).relative)
            for fit in FITS if args.fit else ():
                print(json.dumps({"model": model, "net": len(errors) - 1, **fit}), flush=True)
        print(json.dumps({"config": args.config, "model": model, "exact_steps": exact_steps,
                          "mse_over_var": float(np.mean(errors)),
                          "per_net": errors, "offdiag_share_top_1_2_4_8_16_and_off_over_diag_norm":
                          np.round(np.mean(SPECTRA, axis=0), 3).tolist() if SPECTRA else None}), flush=True)
    factored.factored_nonlinear_step = ORIGINAL


if __name__ == "__main__":
    main()
