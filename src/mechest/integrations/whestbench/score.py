"""``mechest whestbench score``: bake (or reuse) a local WhestBench dataset and score our estimator and the
shipped baselines on it in one run, each under the round's own rules.

Everything goes through the ``whest`` command line of the installed whestbench (``whest dataset bake``,
``whest run --json``), so the scores are WhestBench's own. Ground truths are whest's Monte Carlo means over
S samples; the noise floor of a final-layer MSE is avg_variance / S (avg_variance: the final layer's mean
per-neuron variance, stored in the dataset), printed next to every MSE.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mechest.errors import MechestError
from mechest.integrations.whestbench.export import PackageOptions, export_package

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
    residual_seconds: float


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


def rule_arguments(rules, flops_only: bool = False) -> list[str]:
    """whest run flags that reproduce a round's rulebook; ``flops_only`` prices FLOPs alone (C = F, no residual
    gate, no wall-time cap), to compare estimators independently of this machine's Python speed."""
    if flops_only:
        return ["--flop-budget", str(rules.flop_budget), "--lambda-flops-per-second", "0",
                "--no-residual-wall-time-limit", "--wall-time-limit", "100000"]
    out = ["--flop-budget", str(rules.flop_budget), "--lambda-flops-per-second", str(rules.lambda_flops_per_second),
           "--wall-time-limit", str(rules.wall_time_limit_s)]
    if rules.residual_wall_time_limit_s is None:
        return out + ["--no-residual-wall-time-limit"]
    return out + ["--residual-wall-time-limit", str(rules.residual_wall_time_limit_s)]


def score_estimator(name: str, estimator: Path, class_name: str | None, dataset: Path, rules,
                    flops_only: bool = False) -> Scored:
    arguments = ["run", "--estimator", str(estimator), "--dataset", str(dataset), "--json",
                 *rule_arguments(rules, flops_only)]
    if class_name is not None:
        arguments += ["--class", class_name]
    results = json.loads(run_whest(arguments))["results"]
    per_mlp = results["per_mlp"]
    return Scored(name, results["adjusted_final_layer_score"], results["final_layer_mse"],
                  sum(m["flops_used"] for m in per_mlp) / len(per_mlp), results["mean_effective_compute"],
                  results["n_failed_mlps"], max(m["wall_time_s"] for m in per_mlp),
                  max(m["residual_wall_time_s"] for m in per_mlp))


def noise_floor(dataset: Path) -> float:
    """mean over MLPs of avg_variance / S: the expected final-layer MSE of the truths themselves."""
    import pyarrow.parquet as pq

    metadata = json.loads((dataset / "metadata.json").read_text())
    variances = []
    for path in sorted((dataset / "data").glob("*.parquet")):
        with pq.ParquetFile(path, pre_buffer=False) as file:  # see release_arrow
            variances += file.read(columns=["avg_variance"], use_threads=False).column("avg_variance").to_pylist()
    release_arrow()
    return sum(variances) / len(variances) / metadata["n_samples"]


def release_arrow() -> None:
    """Free the arrow objects of a parquet read or write now, while arrow is fully alive.

    The files are read through ``ParquetFile.read`` without threads or pre-buffering, never ``read_table``: the
    latter goes through arrow's dataset scanner, whose worker thread can still own the file reader (and, through
    its schema, a Python extension type that whestbench's imports register) when the interpreter exits; releasing
    it there needs the GIL during finalization and aborts the process after all its work is done (exit 134,
    "terminate called without an active exception", seen in a core dump). With ``read_table`` the warm-up score
    aborted 8 times in 11 runs here, 0 in 16 with ``ParquetFile.read``."""
    gc.collect()


def baseline_file(root: Path, name: str) -> Path:
    """A one-line estimator file for a shipped baseline (whestbench.estimators uses package-relative imports)."""
    path = root / "baselines" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"from whestbench.estimators import {name} as Estimator  # noqa: F401\n")
    return path


def with_truths(dataset: Path, truths: Path) -> Path:
    """A copy of ``dataset`` whose targets are replaced by longer Monte Carlo means from ``truths``.

    ``truths`` is an .npz with ``samples``, and per MLP i ``means{i}`` (depth × width), ``var{i}`` (the final
    layer's mean per-neuron variance) and ``wsum{i}`` (Σ of its weights, checked against the dataset's so a
    truth never lands on another network). Used where whest's CPU bake cannot afford enough samples.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mechest.mlp import read_npz

    data = read_npz(truths)
    try:
        samples = int(data["samples"])
        digest = hashlib.sha256(truths.read_bytes()).hexdigest()[:12]  # names the copy, reused if present
    except (OSError, ValueError, KeyError) as error:
        raise MechestError(f"cannot read truths {truths}: {error}") from None
    target = dataset.with_name(f"{dataset.name}-truth{samples:.0e}-{digest}".replace("+", ""))
    if (target / "metadata.json").exists():
        return target
    staging = dataset.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(dataset, staging)
    index = 0
    for path in sorted((staging / "data").glob("*.parquet")):
        with pq.ParquetFile(path, pre_buffer=False) as file:  # see release_arrow
            table = file.read(use_threads=False)
        rows = table.to_pylist()
        for row in rows:
            if f"means{index}" not in data:
                raise MechestError(f"{truths} has no truth for MLP {index} of {dataset}")
            weight_sum = float(np.asarray(row["weights"], dtype=np.float64).sum())
            if abs(weight_sum - float(data[f"wsum{index}"])) > 1e-6 * max(1.0, abs(weight_sum)):
                raise MechestError(f"{truths} MLP {index} was computed for other weights than {dataset}")
            means = np.asarray(data[f"means{index}"], dtype=np.float32)
            row["all_layer_means"] = means.tolist()
            row["final_means"] = means[-1].tolist()
            row["avg_variance"] = float(data[f"var{index}"])
            index += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    del table, rows
    release_arrow()
    metadata = json.loads((staging / "metadata.json").read_text())
    metadata["n_samples"] = samples
    metadata["mechest_truths"] = f"targets replaced from {truths.name}: {samples} samples per MLP"
    (staging / "metadata.json").write_text(json.dumps(metadata, indent=2))
    os.replace(staging, target)
    return target


def score_round(round_name: str, n_mlps: int, samples: int, root: Path, package: Path,
                width: int | None = None, depth: int | None = None,
                truths: Path | None = None, flops_only: bool = False,
                options: PackageOptions = PackageOptions()) -> tuple[list[Scored], float, Path]:
    """Bake/reuse the round's dataset (optionally with longer truths), export our package (``options``) to
    ``package``, score ours and the baselines under the round's rules."""
    if n_mlps < 1 or samples < 2:
        raise MechestError(f"need --n-mlps >= 1 and --samples >= 2, got {n_mlps} and {samples}")
    rules = round_rules(round_name)
    dataset = bake(root, width or rules.width, depth or rules.depth, n_mlps, samples)
    if truths is not None:
        dataset = with_truths(dataset, truths)
    export_package(package, options)
    rows = [score_estimator("mechest kprop", package / "estimator.py", "Estimator", dataset, rules, flops_only)]
    rows += [score_estimator(name, baseline_file(root, name), "Estimator", dataset, rules, flops_only)
             for name in BASELINES]
    return rows, noise_floor(dataset), dataset
