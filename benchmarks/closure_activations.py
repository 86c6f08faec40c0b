"""K = 3 closure with and without its slice feed, and K = 3 simple, on tanh and GELU networks (docs/results.md,
"The slice feed"): random_mlp(64, 4, act, bias_mean=0.1, bias_var=0.1, seed=s), s = 0, 1, output mean, MSE/Var
against Monte Carlo truths computed here (3·10⁷ samples, float32 forward passes, input seeds 7000 + s; ≈ 1 min a
net on 2 CPU cores, cached under --cache).

    PYTHONPATH=src python benchmarks/closure_activations.py

Prints one JSON line per network.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

import mechest
from mechest.estimators.truth import compute_truth, load_truth, score
from mechest.kprop import executor as xprop
from mechest.kprop.backends import layers_of, torch_backend
from mechest.kprop.spec import executor_spec

SAMPLES = 30_000_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mechest_activation_truths"))
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    closure_spec, simple_spec = executor_spec(3, "closure", max_width=64), executor_spec(3, "simple", max_width=64)
    closure = xprop.fourth_core(3, "closure")
    schemes = {"simple": (None, simple_spec), "closure without the slice feed": (replace(closure, slice_feed=0),
                                                                                  closure_spec),
               "closure": (closure, closure_spec)}
    for activation in ("tanh", "gelu"):
        for seed in (0, 1):
            net = mechest.random_mlp(64, 4, activation, bias_mean=0.1, bias_var=0.1, seed=seed)
            path = args.cache / f"truth_{activation}_{seed}_{SAMPLES}.npz"
            if not path.exists():
                compute_truth(net, SAMPLES, path, seed=7000 + seed, dtype=torch.float32)
            truth = load_truth(path)
            line = {"activation": activation, "seed": seed}
            for name, (core, spec) in schemes.items():
                result = xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs="mean", core=core)
                line[name] = score(result.mean.double(), truth).relative
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
