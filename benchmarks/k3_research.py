"""Research harness for K = 3 variants on WhestBench's committed networks (issue 15): final-layer MSE against the
committed Monte Carlo truths (noise floor subtracted) and FLOPs (the executor's cost model; ``--meter`` also
runs flopscope's meter once, in float32, as the WhestBench package does).

Networks: the warm-up nets (256×8, seeds FIRST_SEED + 0..2, truth_warmup.npz) and the phase-2 nets (1024×16,
seeds FIRST_SEED + 0..1, truth_phase2.npz), weights regenerated as ``whest dataset bake`` does and checked against
the truths' weight sums. The executor runs on torch (float64 by default) with the plain ReLU Wick table.

    PYTHONPATH=src python benchmarks/k3_research.py --round warmup                       # exact K = 3
    PYTHONPATH=src python benchmarks/k3_research.py --round warmup --age 4 --rank 96     # compressed sources
    PYTHONPATH=src python benchmarks/k3_research.py --round phase2 --nets 1 --dtype float32 --age 4 --rank 384
    PYTHONPATH=src python benchmarks/k3_research.py --round mechest --core plain     # κ_4 matrix core, 256×4
    PYTHONPATH=src python benchmarks/k3_research.py --round warmup --core plain --count
    PYTHONPATH=src python benchmarks/k3_research.py --round warmup --thin 32       # thin correction leg, rank 32

The "mechest" round is mechest's 256×4 benchmark: random_mlp(256, 4, "relu", seed=0..2), the output map's mean
scored by mechest.estimators.truth.score (MSE/Var, noise floor subtracted) against the committed 1e8-sample truths;
its FLOPs are always counted. ``--core`` keeps κ_4 with an n×n core (mechest.kprop.executor.FourthCore,
docs/method.md §7.8): "plain" without the capped (2,1,1) sum (the scheme K = 3 core factored), "summed" with it,
"two" also with the extra two-coordinate terms, "plain-two" the extra terms without the capped sum. ``--count``
counts the first net's FLOPs with mechest.flops.FlopCounter (the torch run's operations; the cost model
``planned_flops`` leaves out the core's work). ``--thin RANK`` keeps each source's correction leg thin
(mechest.kprop.executor.ThinCorrection, docs/method.md §7.10; ``--thin-power`` power iterations of its range finder);
``--core closure`` is the scheme (its shape and feed; ``--shape S`` another shape, ``--no-feed`` without the feed of
the modelled κ_4 into each new κ_3 source, FourthCore.feed, §7.9);
it combines with ``--age``/``--rank`` (which the mechest round also passes to the executor).

Prints one JSON line per network and one summary line (mean MSE, FLOPs, FLOPs / B, score = MSE·max(0.1, C/B); with
a counted run, FLOPs is the count).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mechest.flops import FlopCounter
from mechest.kprop import executor as xprop
from mechest.kprop.spec import executor_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whest_gpu_truths import FIRST_SEED, whest_weights  # the bake's weight generator

DATA = Path(__file__).resolve().parent / "data" / "whestbench"
ROUNDS = {"warmup": (256, 8, 3, 6.8e10), "phase2": (1024, 16, 2, 2.0**41), "mechest": (256, 4, 3, 1.5e9)}
"""width, depth, nets, budget B (mechest: the 256×4 cost target of issue 15)"""
CORES = {"plain": xprop.FourthCore(summed=False), "summed": xprop.FourthCore(), "two": xprop.FourthCore(two=True),
         "closure": xprop.fourth_core(3, "closure"),
         "plain-two": xprop.FourthCore(summed=False, two=True)}


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
              options: xprop.PlanOptions = xprop.PlanOptions(), core: xprop.FourthCore | None = None,
              counter: FlopCounter | None = None) -> np.ndarray:
    columns = [torch.tensor(w.T, dtype=dtype) for w in weights]  # h @ W is mechest's W.T @ h
    layers = xprop.relu_layers(columns)
    with counter or contextlib.nullcontext():
        means = xprop.planned(torch_backend(), layers, spec, core=core, options=options).layer_means
    return torch.stack(means).double().numpy()


def mechest_score(index: int, spec: dict, dtype: torch.dtype, core: xprop.FourthCore | None,
                  counter: FlopCounter, options: xprop.PlanOptions = xprop.PlanOptions()) -> tuple[float, float]:
    """(MSE/Var, noise floor / Var) of the output mean of random_mlp(256, 4, seed=index) against its committed
    truth (mechest's 256×4 benchmark), the run counted by ``counter``."""
    import mechest
    from mechest.estimators.truth import score
    from mechest.experiments.bench import find_truth
    from mechest.kprop.backends import layers_of

    net = mechest.random_mlp(256, 4, "relu", seed=index)
    truth = find_truth(net, 10**8, [DATA.parent / "truths"])
    layers = layers_of(net.to(dtype=dtype))
    with counter:
        result = xprop.planned(torch_backend(), layers, spec, outputs="mean", core=core, options=options)
    error = score(result.mean.double(), truth)
    return error.relative, error.noise_floor / error.variance


def metered_flops(weights: list[np.ndarray], spec: dict, options: xprop.PlanOptions = xprop.PlanOptions(),
                  core: xprop.FourthCore | None = None) -> int:
    """flopscope's count of the float32 run (as the WhestBench package runs it)."""
    import warnings

    import flopscope as flops
    import flopscope.numpy as fnp

    from mechest.integrations.whestbench.estimator import BACKEND

    columns = [fnp.asarray(np.ascontiguousarray(w.T)) for w in weights]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with flops.BudgetContext(flop_budget=10**15, quiet=True) as context:
            xprop.planned(BACKEND, xprop.relu_layers(columns), spec, core=core, options=options)
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
    parser.add_argument("--core", choices=sorted(CORES), default=None,
                        help="κ_4 with an n×n core (docs/method.md §7.8): without / with the capped (2,1,1) sum, or "
                             "also with the two-coordinate terms")
    parser.add_argument("--shape", type=float, default=None,
                        help="with --core closure: its multiple of ρ (default mechest's CLOSURE_SHAPE)")
    parser.add_argument("--no-feed", action="store_true",
                        help="with --core closure: without the feed of the modelled κ_4 into new κ_3 sources "
                             "(FourthCore.feed, docs/method.md §7.9; the scheme has it)")
    parser.add_argument("--slice-feed", type=int, default=None, metavar="RANK",
                        help="with --core closure: augment's κ_2 × κ_3 top-slice terms as a rank-RANK feed "
                             "(FourthCore.slice_feed, docs/method.md §7.9; default the scheme's)")
    parser.add_argument("--count", action="store_true", help="count the first net's FLOPs (mechest.flops)")
    parser.add_argument("--thin", type=int, default=None, metavar="RANK",
                        help="thin correction leg with a rank-RANK residual (docs/method.md §7.10; default: exact Q)")
    parser.add_argument("--thin-power", type=int, default=1,
                        help="power iterations of the thin residual's range finder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, depth, count, budget = ROUNDS[args.round]
    compression = None if args.age is None else xprop.Compression(args.age, args.rank or width, args.power)
    spec = executor_spec(3, "simple" if args.core is None else "core", max_width=width)
    core = None if args.core is None else CORES[args.core]
    if (args.shape is not None or args.no_feed or args.slice_feed is not None) and args.core != "closure":
        raise SystemExit("--shape, --no-feed and --slice-feed are options of the closure: use them with --core closure")
    if args.slice_feed is not None:
        core = replace(core, slice_feed=args.slice_feed)
    if args.shape is not None:
        core = replace(core, shape=args.shape)
    if args.no_feed:
        core = replace(core, feed=False)
    correction = None if args.thin is None else xprop.ThinCorrection(args.thin, args.thin_power)
    options = xprop.PlanOptions(compression=compression, strassen=args.strassen, correction=correction)
    flops = xprop.planned_flops(width, depth, 3, core=core, options=options)
    errors, counted = [], []
    for index in range(args.nets or count):
        counter = FlopCounter() if args.round == "mechest" or (args.count and index == 0) else None
        start = time.perf_counter()
        if args.round == "mechest":
            # the mechest round runs without Strassen's products, as it always has
            mse, floor = mechest_score(index, spec, getattr(torch, args.dtype), core, counter,
                                       replace(options, strassen=0))
            line = {"net": index, "mse_over_var": mse, "noise_floor_over_var": floor}
        else:
            weights, truth, floor = network(args.round, index)
            means = run_means(weights, spec, getattr(torch, args.dtype), options, core, counter)
            mse = float(np.mean((means[-1] - truth[-1]) ** 2)) - floor
            line = {"net": index, "final_mse": mse, "noise_floor": floor}
        line["seconds"] = round(time.perf_counter() - start, 1)
        errors.append(mse)
        if counter is not None:
            counted.append(counter.total)
            line["counted_flops"] = counter.total
        if args.meter and index == 0 and args.round != "mechest":
            line["metered_flops"] = metered_flops(weights, spec, options, core)
            line["metered_over_predicted"] = line["metered_flops"] / flops
        print(json.dumps(line), flush=True)
    mse = float(np.mean(errors))
    flops = float(np.mean(counted)) if counted else flops
    print(json.dumps({"round": args.round, "age": args.age, "rank": args.rank, "power": args.power,
                      "strassen": args.strassen, "core": args.core, "shape": None if core is None else core.shape,
                      "feed": None if core is None else core.feed,
                      "slice_feed": None if core is None else core.slice_feed,
                      "thin": args.thin, "thin_power": args.thin_power, "counted": bool(counted),
                      "final_mse": mse, "flops": flops, "flops_over_budget": flops / budget,
                      "score": mse * max(0.1, flops / budget)}), flush=True)


if __name__ == "__main__":
    main()
