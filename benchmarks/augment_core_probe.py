"""Probe of K = 3 AUGMENT's κ_4 core (issue 15; docs/results.md, "Which augment terms matter"): run a hybrid plan of
benchmarks/augment_ablation.py and replace the n×n core G of κ_4 = Sym(G ⊗ I) after every nonlinear step by a
cheaper model of it, to see which part of G carries the gain.

    PYTHONPATH=src python benchmarks/augment_core_probe.py --config core --models full diag rank1 rank4

Models: ``full`` (G itself), ``diag`` (its diagonal only), ``diagmean`` (diagonal plus the mean off-diagonal
entry everywhere off the diagonal), ``rankK`` (diagonal plus the K eigenpairs of largest |λ| of the off-diagonal
part), ``zero`` (G = 0). Also prints the off-diagonal part's spectrum (share of ‖G_off‖²_F in the top eigenpairs).
"""

from __future__ import annotations

import argparse
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


def modelled(core: torch.Tensor, model: str) -> torch.Tensor:
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
    if model.startswith("rank"):
        k = int(model[4:])
        values, vectors = torch.linalg.eigh(off)
        top = torch.argsort(values.abs(), descending=True)[:k]
        return diagonal + off_diag((vectors[:, top] * values[top]) @ vectors[:, top].T)
    raise ValueError(model)


def off_diag(matrix: torch.Tensor) -> torch.Tensor:
    return matrix - torch.diag(torch.diagonal(matrix))


def patched(model: str):
    def step(state, activation, plan):
        out = ORIGINAL(state, activation, plan)
        piece = out.tower.get(4)
        if piece is None or piece.r != 1:
            return out
        off = off_diag(piece.core)
        values = torch.linalg.eigvalsh(off)
        share = (values**2).sort(descending=True).values.cumsum(0) / (values**2).sum()
        SPECTRA.append([float(share[k - 1]) for k in (1, 2, 4, 8, 16)]
                       + [float(torch.linalg.norm(off) / torch.linalg.norm(torch.diagonal(piece.core)))])
        tower = dict(out.tower)
        tower[4] = HTensor(modelled(piece.core, model), piece.r, piece.metric, n=piece.n)
        return factored.FactoredState(tower, out.third)
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="core")
    parser.add_argument("--models", nargs="+", default=["full", "diag"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = hybrid_plan(args.config)
    nets = [mechest.random_mlp(256, 4, "relu", seed=s) for s in args.seeds]
    truths = [find_truth(net, 10**8, [TRUTHS]) for net in nets]
    for model in args.models:
        factored.factored_nonlinear_step = patched(model)
        SPECTRA.clear()
        errors = [score(run(net, plan).double(), truth).relative for net, truth in zip(nets, truths, strict=True)]
        print(json.dumps({"config": args.config, "model": model, "mse_over_var": float(np.mean(errors)),
                          "per_net": errors, "offdiag_share_top_1_2_4_8_16_and_off_over_diag_norm":
                          np.round(np.mean(SPECTRA, axis=0), 3).tolist() if SPECTRA else None}), flush=True)
    factored.factored_nonlinear_step = ORIGINAL


if __name__ == "__main__":
    main()
