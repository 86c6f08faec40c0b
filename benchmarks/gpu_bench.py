"""kprop against Monte Carlo on one device (a GPU by default): wall-clock and FLOPs at widths 256 and 1024.

For each width (He-init ReLU, ``--depth`` hidden layers, seed 0) it times kprop K = 1, K = 2 (simple and
augment), factored K = 3 (both variants) and K = 4 simple (up to width 256), and Monte Carlo at a fixed set
of sample counts (giving the time per sample). Every timing is the best of ``--repeats`` runs after a warm-up
run, each ended by a device synchronize (inside ``mechest.estimators.estimate``). With ``--truth-samples N``
it also samples a truth of N inputs and prints each kprop estimate's MSE/Var, the Monte Carlo sample count
with the same expected error (N_match = 1 / (MSE/Var), since Monte Carlo with N samples has MSE/Var = 1/N)
and how long Monte Carlo takes to reach it on this device (N_match × the measured time per sample).

Run: python benchmarks/gpu_bench.py                    (cuda when available: widths 256 1024, truth 1e8)
     python benchmarks/gpu_bench.py --device cpu       (smaller: widths 64 256, no truth)
"""

from __future__ import annotations

import argparse
import math

import torch

from mechest.device import device_name, resolve_device
from mechest.estimators.estimate import DTYPES, Estimate, estimate
from mechest.estimators.montecarlo import default_chunk_size, sample_moments
from mechest.estimators.truth import Truth, score
from mechest.mlp import MLP, random_mlp
from mechest.tables import format_table

KPROP_CONFIGURATIONS = [(1, "simple", False), (2, "simple", False), (2, "augment", False), (3, "simple", True),
                        (3, "augment", True), (4, "simple", True)]
MAX_K4_WIDTH = 256  # pair-factored κ_4 holds R·n² numbers, R ≈ 11n after 4 layers: 12 GB at width 1024
DEFAULTS = {  # device type -> (widths, Monte Carlo sample counts, truth samples)
    "cuda": ([256, 1024], [10**5, 10**6, 10**7], 10**8),
    "cpu": ([64, 256], [10**3, 10**4], 0),
}
TRUTH_SEED = 12345


def best_run(run, repeats: int) -> Estimate:
    """One warm-up run (kernel loading, caches), then the fastest of ``repeats`` runs."""
    run()
    return min((run() for _ in range(repeats)), key=lambda result: result.seconds)


def sampled_truth(net: MLP, samples: int) -> Truth:
    moments = sample_moments(net, samples, TRUTH_SEED, progress=True)
    return Truth(moments.mean.cpu().numpy(), moments.variance.cpu().numpy(), samples, TRUTH_SEED, "")


def bench_width(net: MLP, args: argparse.Namespace, truth: Truth | None) -> list[list]:
    """Rows of the table for one network."""
    rows, per_sample = [], math.inf
    for samples in args.samples:
        mc = best_run(lambda: estimate(net, "mc", samples=samples, seed=1), args.repeats)
        per_sample = mc.seconds / samples  # the largest run's time per sample (least overhead) is kept
        rows.append([net.dims[1], f"MC N={samples:.0e}", f"{mc.flops:.3e}", f"{mc.seconds:.4f}",
                     f"{per_sample:.3e}", "", "", ""])
    for order, variant, factored in args.configurations:
        kp = best_run(lambda: estimate(net, "kprop", order=order, variant=variant, factored=factored), args.repeats)
        label = f"kprop K={order} {variant}" + (" factored" if factored else "")
        matched = ["", "", ""]
        if truth is not None:
            relative = score(kp.mean, truth).relative
            if relative > 0:
                n_match = 1 / relative
                matched = [f"{relative:.3e}", f"{n_match:.3e}", f"{n_match * per_sample:.3e}"]
            else:
                matched = [f"{relative:.1e} (below floor)", f"> {truth.samples:.0e}",
                           f"> {truth.samples * per_sample:.3e}"]
        rows.append([net.dims[1], label, f"{kp.flops:.3e}", f"{kp.seconds:.4f}", "", *matched])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float64")
    parser.add_argument("--widths", type=int, nargs="+", help="default: 256 1024 on cuda, 64 256 on cpu")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--samples", type=float, nargs="+", help="Monte Carlo sample counts (default by device)")
    parser.add_argument("--truth-samples", type=float, help="truth size for MSE matching; 0 skips (default by device)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-augment", action="store_true", help="skip K = 2 augment")
    args = parser.parse_args()
    device = resolve_device(args.device)
    widths, samples, truth_samples = DEFAULTS[device.type]
    args.widths = args.widths or widths
    args.samples = [int(n) for n in (args.samples or samples)]
    truth_samples = int(truth_samples if args.truth_samples is None else args.truth_samples)
    args.configurations = [c for c in KPROP_CONFIGURATIONS if not (args.no_augment and c[1] == "augment")]

    print(f"device: {device_name(device)} ({device}), torch {torch.__version__}, dtype {args.dtype}, "
          f"depth {args.depth}, best of {args.repeats} after a warm-up", flush=True)
    header = ["width", "method", "FLOPs", "seconds", "s / sample", "MSE/Var", "N_match", "MC s at N_match"]
    for width in args.widths:
        net = random_mlp(width, args.depth, "relu", seed=0).to(dtype=DTYPES[args.dtype], device=device)
        print(f"width {width}: forward pass {net.flops_per_sample():.3e} FLOPs/sample, "
              f"Monte Carlo chunk {default_chunk_size(net)}", flush=True)
        truth = sampled_truth(net, truth_samples) if truth_samples else None
        configurations = args.configurations
        args.configurations = [c for c in configurations if c[0] < 4 or width <= MAX_K4_WIDTH]
        print(format_table(header, bench_width(net, args, truth)), flush=True)
        args.configurations = configurations
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
