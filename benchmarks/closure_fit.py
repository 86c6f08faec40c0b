"""Fit the closure's shape (K = 3 "closure", docs/method.md §7.9) on networks disjoint from every scored one.

Calibration networks: WhestBench-style He-init ReLU nets of width 256 and depth 8 (the warm-up's shape), weights
from seeds FIRST_SEED + 1000 + i (i = 0, 1, 2) by the bake's generator, so they are none of the warm-up nets
(FIRST_SEED + 0..2 at 256×8), the phase-2 nets (1024×16) or mechest's 256×4 benchmark nets. Their truths are
Monte Carlo means computed here on the CPU (float32 forward passes, float64 sums, input seeds 5000 + i) and
committed as benchmarks/data/whestbench/truth_calibration.npz.

    python benchmarks/closure_fit.py truths --samples 2e7     # ≈ 15 min a net on 2 shared cores
    PYTHONPATH=src python benchmarks/closure_fit.py fit        # the shape grid, one JSON line per shape
    PYTHONPATH=src python benchmarks/closure_fit.py fit --no-feed  # the same without the closure's feed

``fit`` scores every shape of the grid by the mean final-layer MSE over the calibration nets (noise floor Var/N
subtracted) and prints the best; the derived shape (1) is among them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whest_gpu_truths import FIRST_SEED, truth, whest_weights  # noqa: E402 (the bake's weight generator)

DATA = Path(__file__).resolve().parent / "data" / "whestbench" / "truth_calibration.npz"
WIDTH, DEPTH, NETS = 256, 8, 3
SEED_OFFSET = 1000
SHAPES = (0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def calibration_weights(index: int) -> list[np.ndarray]:
    return whest_weights(FIRST_SEED + SEED_OFFSET + index, WIDTH, DEPTH)


def make_truths(samples: int, out: Path) -> None:
    """Monte Carlo truths of the calibration nets, written after each net (a rerun continues where it stopped)."""
    arrays = dict(np.load(out)) if out.exists() else {"samples": samples}
    if int(arrays["samples"]) != samples:
        raise SystemExit(f"{out} holds {int(arrays['samples'])}-sample truths; delete it to change --samples")
    for index in range(NETS):
        if f"means{index}" in arrays:
            continue
        start = time.time()
        weights = calibration_weights(index)
        arrays[f"means{index}"], arrays[f"var{index}"] = truth(weights, samples, 5000 + index, "cpu")
        arrays[f"wsum{index}"] = float(sum(w.astype(np.float64).sum() for w in weights))
        partial = out.with_suffix(".partial.npz")
        np.savez(partial, **arrays)
        partial.replace(out)
        print(json.dumps({"net": index, "samples": samples, "seconds": round(time.time() - start)}), flush=True)


def final_layer_mse(shape: float, truths: dict, dtype: torch.dtype, feed: bool = True) -> float:
    from mechest.kprop import executor as xprop
    from mechest.kprop.spec import executor_spec

    spec = executor_spec(3, "closure", max_width=WIDTH)
    core = replace(xprop.fourth_core(3, "closure"), shape=shape, feed=feed)
    errors = []
    for index in range(NETS):
        weights = calibration_weights(index)
        if not np.isclose(sum(w.astype(np.float64).sum() for w in weights), float(truths[f"wsum{index}"])):
            raise SystemExit(f"calibration net {index} does not match its truth")
        layers = xprop.relu_layers([torch.tensor(w.T, dtype=dtype) for w in weights])
        means = xprop.planned(xprop.Backend(torch, torch.special.ndtr), layers, spec, core=core).layer_means
        floor = float(truths[f"var{index}"]) / float(truths["samples"])
        errors.append(float(np.mean((means[-1].double().numpy() - truths[f"means{index}"][-1]) ** 2)) - floor)
    return float(np.mean(errors))


def fit(shapes: tuple[float, ...], dtype: torch.dtype, feed: bool = True) -> float:
    truths = dict(np.load(DATA))
    scores = {}
    for shape in shapes:
        scores[shape] = final_layer_mse(shape, truths, dtype, feed)
        print(json.dumps({"shape": shape, "feed": feed, "final_mse": scores[shape]}), flush=True)
    best = min(scores, key=scores.get)
    print(json.dumps({"best_shape": best, "final_mse": scores[best], "derived_shape_mse": scores.get(1.0),
                      "nets": NETS, "samples": int(truths["samples"])}), flush=True)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    truths = commands.add_parser("truths", help="compute the calibration nets' Monte Carlo truths")
    truths.add_argument("--samples", type=float, default=2e7)
    truths.add_argument("--out", type=Path, default=DATA)
    fitting = commands.add_parser("fit", help="score the shape grid on the calibration nets")
    fitting.add_argument("--shapes", type=float, nargs="+", default=SHAPES)
    fitting.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    fitting.add_argument("--no-feed", dest="feed", action="store_false",
                         help="the closure without its feed (FourthCore.feed; the scheme has it)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "truths":
        make_truths(int(args.samples), args.out)
    else:
        fit(tuple(args.shapes), getattr(torch, args.dtype), args.feed)


if __name__ == "__main__":
    main()
