"""Research harness for K = 3 variants on WhestBench's committed networks (issue 15): final-layer MSE against the
committed Monte Carlo truths (noise floor subtracted) and FLOPs (the executor's cost model; ``--meter`` also
runs flopscope's meter once, in float32, as the WhestBench package does).

Networks: the warm-up nets (256×8, seeds FIRST_SEED + 0..2, truth_warmup.npz) and the phase-2 nets (1024×16,
seeds FIRST_SEED + 0..1, truth_phase2.npz), weights regenerated as ``whest dataset bake`` does and checked against
the truths' weight sums. The executor runs on torch (float64 by default) with the plain ReLU Wick table.

    PYTHONPATH=src python benchmarks/k3_research.py --round warmup                       # exact K = 3
    PYTHONPATH=src python benchmarks/k3_research.py --round warmup --age 4 --rank 96     # compressed sources
    PYTHONPATH=src python benchmarks/k3_research.py --round phase2 --nets 1 --dtype float32 --age 4 --rank 384

Prints one JSON line per network and one summary line (mean MSE, FLOPs, FLOPs / B, score = MSE·max(0.1, C/B)).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mechest.kprop import executor as xprop
from mechest.kprop.spec import executor_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whest_gpu_truths import FIRST_SEED, whest_weights  # the bake's weight generator

DATA = Path(__file__).resolve().parent / "data" / "whestbench"
ROUNDS = {"warmup": (256, 8, 3, 6.8e10), "phase2": (1024, 16, 2, 2.0**41)}  # width, depth, nets, budget B


def torch_backend() -> xprop.Backend:
    return xprop.Backend(torch, torch.special.ndtr)


def network(round_name: str, index: int) -> tuple[list[np.ndarray], np.ndarray, float]:
    """(weights in WhestBench's row convention, truth means (depth, width), noise floor of the final-layer MSE)."""
    width, depth, _, _ = ROUNDS[round_name]
    truths = np.load(DATA / f"truth_{round_name}.npz")
    weights = whest_weights(FIRST_SEED + index, width, depth)
    weight_sum = float(sum(w.astype(np.float64).sum() for w in weights))
    if not np.isclose(weight_sum, float(truths[f"wsum{index}"]), rtol=0, atol=1e-6 * abs(weight_sum) + 1e-6):
        raise SystemExit(f"regenerated weights of net {index} do not match the truths ({weight_sum})")
    return weights, truths[f"means{index}"], float(truths[f"var{index}"]) / float(truths["samples"])


def run_means(weights: list[np.ndarray], spec: dict, dtype: torch.dtype,
              compression: xprop.Compression | None, strassen: int = 0) -> np.ndarray:
    columns = [torch.tensor(w.T, dtype=dtype) for w in weights]  # h @ W is mechest's W.T @ h
    layers = xprop.relu_layers(columns)
    means = xprop.planned(torch_backend(), layers, spec, compression=compression, strassen=strassen).layer_means
    return torch.stack(means).double().numpy()


def metered_flops(weights: list[np.ndarray], spec: dict, compression: xprop.Compression | None,
                  strassen: int = 0) -> int:
    """flopscope's count of the float32 run (as the WhestBench package runs it)."""
    import warnings

    import flopscope as flops
    import flopscope.numpy as fnp

    from mechest.integrations.whestbench.estimator import BACKEND

    columns = [fnp.asarray(np.ascontiguousarray(w.T)) for w in weights]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with flops.BudgetContext(flop_budget=10**15, quiet=True) as context:
            xprop.planned(BACKEND, xprop.relu_layers(columns), spec, compression=compression, strassen=strassen)
            return int(context.flops_used)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", choices=sorted(ROUNDS), default="warmup")
    parser.add_argument("--nets", type=int, default=None, help="how many of the round's nets (default all)")
    parser.add_argument("--age", type=int, default=None, help="compress sources older than this (default: exact)")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--power", type=int, default=0)
    parser.add_argument("--strassen", type=int, default=0, help="levels of Strassen's recursion in the products")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--meter", action="store_true", help="also meter the first net with flopscope (float32)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, depth, count, budget = ROUNDS[args.round]
    compression = None if args.age is None else xprop.Compression(args.age, args.rank or width, args.power)
    spec = executor_spec(3, "simple", max_width=width)
    predicted = xprop.planned_flops(width, depth, 3, compression=compression, strassen=args.strassen)
    errors = []
    for index in range(args.nets or count):
        weights, truth, floor = network(args.round, index)
        start = time.perf_counter()
        means = run_means(weights, spec, getattr(torch, args.dtype), compression, args.strassen)
        seconds = time.perf_counter() - start
        mse = float(np.mean((means[-1] - truth[-1]) ** 2)) - floor
        errors.append(mse)
        line = {"net": index, "final_mse": mse, "noise_floor": floor, "seconds": round(seconds, 1)}
        if args.meter and index == 0:
            line["metered_flops"] = metered_flops(weights, spec, compression, args.strassen)
            line["metered_over_predicted"] = line["metered_flops"] / predicted
        print(json.dumps(line), flush=True)
    mse = float(np.mean(errors))
    print(json.dumps({"round": args.round, "age": args.age, "rank": args.rank, "power": args.power,
                      "strassen": args.strassen,
                      "final_mse": mse, "flops": predicted, "flops_over_budget": predicted / budget,
                      "score": mse * max(0.1, predicted / budget)}), flush=True)


if __name__ == "__main__":
    main()
