"""``mechest whestbench score``: bake (or reuse) a local WhestBench dataset and score our estimator and the
shipped baselines on it in one run, each under the round's own rules.

Everything goes through the ``whest`` command line of the installed whestbench (``whest dataset bake``,
``whest run --json``), so the scores are WhestBench's own. Ground truths are whest's Monte Carlo means over
S samples; the noise floor of a final-layer MSE is avg_variance / S (avg_variance: the final layer's mean
per-neuron variance, stored in the dataset), printed next to every MSE.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mechest.errors import MechestError
from mechest.whest.export import export_package

ROUNDS = {"warmup": "v1-warmup", "phase1": "v1-phase1", "phase2": "v2-phase2"}
BASELINES = ("MeanPropagationEstimator", "CovariancePropagationEstimator")
FIRST_SEED = 20261125


@dataclass(frozen=True)
class Scored:
    """One estimator's WhestBench result on a dataset."""

    name: str
    score: float
    final_mse: float
    flops: float
    effective_compute: float
    failed: int
    seconds: float


def whest_executable() -> str:
    """Path of the ``whest`` CLI beside this Python (the [whestbench] extra), or a one-line error."""
    candidate = Path(sys.executable).with_name("whest")
    found = str(candidate) if candidate.exists() else shutil.which("whest")
    if found is None:
        raise MechestError("whestbench is not installed: pip install -e '.[whestbench]'")
    return found


def round_rules(round_name: str):
    """WhestBench's RoundConfig for ``round_name`` (budget, residual pricing or gate, wall-time cap)."""
    if round_name not in ROUNDS:
        raise MechestError(f"unknown round {round_name!r}; expected one of {', '.join(ROUNDS)}")
    try:
        from whestbench.budget import ROUNDS as WHEST_ROUNDS
    except ImportError:
        raise MechestError("whestbench is not installed: pip install -e '.[whestbench]'") from None
    return WHEST_ROUNDS[ROUNDS[round_name]]


def run_whest(arguments: list[str]) -> str:
    """Run ``whest ARGS`` and return its stdout, or raise a one-line MechestError with its last stderr line."""
    done = subprocess.run([whest_executable(), *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise MechestError(f"whest {arguments[0]} failed: {lines[-1] if lines else 'exit ' + str(done.returncode)}")
    return done.stdout


def dataset_path(root: Path, width: int, depth: int, n_mlps: int, samples: int) -> Path:
    return root / f"w{width}-d{depth}-m{n_mlps}-s{samples:.0e}".replace("+", "")


def bake(root: Path, width: int, depth: int, n_mlps: int, samples: int) -> Path:
    """Bake the dataset with fixed per-MLP seeds, or reuse it if it exists (written to a temporary name first)."""
    target = dataset_path(root, width, depth, n_mlps, samples)
    if (target / "metadata.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    seeds = root / f"{target.name}.seeds.json"
    seeds.write_text(json.dumps([FIRST_SEED + i for i in range(n_mlps)]))
    staging = root / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    run_whest(["dataset", "bake", "--n-mlps", str(n_mlps), "--n-samples", str(samples), "--width", str(width),
               "--depth", str(depth), "--mlp-seeds", str(seeds), "--output", str(staging)])
    os.replace(staging, target)
    return target


def rule_arguments(rules) -> list[str]:
    """whest run flags that reproduce a round's rulebook."""
    out = ["--flop-budget", str(rules.flop_budget), "--lambda-flops-per-second", str(rules.lambda_flops_per_second),
           "--wall-time-limit", str(rules.wall_time_limit_s)]
    if rules.residual_wall_time_limit_s is None:
        return out + ["--no-residual-wall-time-limit"]
    return out + ["--residual-wall-time-limit", str(rules.residual_wall_time_limit_s)]


def score_estimator(name: str, estimator: Path, class_name: str | None, dataset: Path, rules) -> Scored:
    arguments = ["run", "--estimator", str(estimator), "--dataset", str(dataset), "--json", *rule_arguments(rules)]
    if class_name is not None:
        arguments += ["--class", class_name]
    results = json.loads(run_whest(arguments))["results"]
    per_mlp = results["per_mlp"]
    return Scored(name, results["adjusted_final_layer_score"], results["final_layer_mse"],
                  sum(m["flops_used"] for m in per_mlp) / len(per_mlp), results["mean_effective_compute"],
                  results["n_failed_mlps"], max(m["wall_time_s"] for m in per_mlp))


def noise_floor(dataset: Path) -> float:
    """mean over MLPs of avg_variance / S: the expected final-layer MSE of the truths themselves."""
    import pyarrow.parquet as pq

    metadata = json.loads((dataset / "metadata.json").read_text())
    variances = [v for f in sorted((dataset / "data").glob("*.parquet"))
                 for v in pq.read_table(f, columns=["avg_variance"]).column("avg_variance").to_pylist()]
    return sum(variances) / len(variances) / metadata["n_samples"]


def score_round(round_name: str, n_mlps: int, samples: int, root: Path, package: Path,
                width: int | None = None, depth: int | None = None) -> tuple[list[Scored], float, Path]:
    """Bake/reuse the round's dataset, export our package to ``package``, score ours and the baselines."""
    if n_mlps < 1 or samples < 2:
        raise MechestError(f"need --n-mlps >= 1 and --samples >= 2, got {n_mlps} and {samples}")
    rules = round_rules(round_name)
    dataset = bake(root, width or rules.width, depth or rules.depth, n_mlps, samples)
    export_package(package)
    import whestbench.estimators as shipped

    rows = [score_estimator("mechest kprop", package / "estimator.py", "Estimator", dataset, rules)]
    rows += [score_estimator(name, Path(shipped.__file__), name, dataset, rules) for name in BASELINES]
    return rows, noise_floor(dataset), dataset
