"""Benchmark of the propagation engine against Monte Carlo at equal MSE (width 256, 4 hidden ReLU layers).

For each seed: the kprop estimate's FLOPs (counted in its run) and wall-clock (fastest of --repeats uncounted runs),
its MSE/Var against the committed 1e8-sample truth (noise floor subtracted), and what Monte Carlo needs for the same
error: N = 1/(MSE/Var) samples, i.e. N × forward-pass FLOPs and N × (its measured seconds per sample, fastest of
--repeats runs of --mc-samples), timed in float32 (its fastest precision) and in the precision of the kprop row.
Both timings come from the same run, so their ratio is robust to a shared machine; ``--load`` repeats everything
while a CPU-bound process runs beside it. The last lines time the whole ``mechest estimate`` process.

kprop runs in float64 (mechest's default) and, with ``--dtypes float64 float32``, also in float32 (rows
"3f/float32").

Run: python benchmarks/engine_bench.py [--schemes 3f 2a 2] [--seeds 0 1 2] [--dtypes float64 float32] [--load]
(works on earlier mechest versions too: it only calls ``estimate``, for before/after comparisons).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import fastest

from mechest import estimate, random_mlp
from mechest.tables import format_table

try:  # the layered layout
    from mechest.estimators.truth import score
    from mechest.experiments.bench import find_truth
except ImportError:  # earlier versions, for before/after comparisons
    from mechest.bench import find_truth  # type: ignore[no-redef]
    from mechest.truth import score  # type: ignore[no-redef]

TRUTHS = Path(__file__).resolve().parent / "data" / "truths"
SCHEMES = {"1": (1, "simple", False), "2": (2, "simple", False), "2a": (2, "augment", False),
           "3f": (3, "simple", True), "3af": (3, "augment", True)}
LOAD = "import torch\nx = torch.randn(1024, 1024)\nwhile True:\n    x = torch.tanh(x @ x / 32)\n"



def kprop_seconds(net, order: int, variant: str, factored: bool, dtype: str, repeats: int) -> float:
    """Fastest uncounted run (``count=False`` where this mechest has it; older versions timed a plain run)."""
    options = {"order": order, "variant": variant, "factored": factored, "dtype": dtype}
    try:
        estimate(net, "kprop", count=False, **options)
        return fastest(lambda: estimate(net, "kprop", count=False, **options), repeats)
    except TypeError:
        return min(estimate(net, "kprop", **options).seconds for _ in range(repeats))


def measure(seeds: list[int], schemes: list[str], dtypes: list[str], repeats: int, mc_samples: int) -> list[list]:
    rows = []
    for seed in seeds:
        net = random_mlp(256, 4, "relu", seed=seed)
        truth = find_truth(net, 10**8, [TRUTHS])
        if truth is None:
            raise SystemExit(f"no committed 1e8-sample truth of random_mlp(256, 4, relu, seed={seed}) in {TRUTHS}")
        mc_per_sample = {dtype: fastest(lambda dtype=dtype: estimate(net, "mc", samples=mc_samples, seed=seed,
                                                                     dtype=dtype), repeats) / mc_samples
                         for dtype in dict.fromkeys(["float32", *dtypes])}
        for key in schemes:
            order, variant, factored = SCHEMES[key]
            for dtype in dtypes:
                result = estimate(net, "kprop", order=order, variant=variant, factored=factored, dtype=dtype)
                seconds = kprop_seconds(net, order, variant, factored, dtype, repeats)
                relative = score(result.mean.double(), truth).relative
                samples = 1 / relative
                label = key if dtype == "float64" else f"{key}/{dtype}"
                rows.append([seed, label, result.flops, seconds, relative,
                             samples * net.flops_per_sample() / result.flops,
                             samples * mc_per_sample["float32"] / seconds, samples * mc_per_sample[dtype] / seconds,
                             mc_per_sample["float32"]])
    return rows


def process_seconds(key: str, dtype: str, repeats: int) -> float:
    """Wall-clock of the whole ``mechest estimate --weights F`` process (imports included), fastest of repeats."""
    order, variant, factored = SCHEMES[key]
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "net.npz"
        random_mlp(256, 4, "relu", seed=0).save(weights)
        command = [sys.executable, "-m", "mechest.cli", "estimate", "--weights", str(weights), "--order",
                   str(order), "--variant", variant, "--dtype", dtype, "--json"] + (["--factored"] if factored else [])
        return fastest(lambda: subprocess.run(command, check=True, capture_output=True), repeats)


def report(rows: list[list], title: str) -> None:
    print(f"\n{title}")
    print(format_table(["seed", "scheme", "FLOPs", "seconds", "MSE/Var", "MC FLOPs / kprop at equal MSE",
                        "MC float32 time / kprop at equal MSE", "MC time in kprop's precision / kprop",
                        "MC float32 s/sample"], rows))
    for key in dict.fromkeys(row[1] for row in rows):
        mine = [row for row in rows if row[1] == key]
        print(f"{key}: median FLOPs {statistics.median(r[2] for r in mine):.3g}, seconds "
              f"{statistics.median(r[3] for r in mine):.3g}, MSE/Var {statistics.mean(r[4] for r in mine):.3g}, "
              f"FLOP advantage {statistics.median(r[5] for r in mine):.3g}x, "
              f"wall-clock advantage {statistics.median(r[6] for r in mine):.3g}x against float32 Monte Carlo, "
              f"{statistics.median(r[7] for r in mine):.3g}x at equal precision")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", nargs="+", choices=tuple(SCHEMES), default=["3f", "2a", "2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", choices=("float64", "float32"), default=["float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mc-samples", type=int, default=2**14)
    parser.add_argument("--load", action="store_true", help="also measure while a CPU-bound process runs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    report(measure(args.seeds, args.schemes, args.dtypes, args.repeats, args.mc_samples), "quiet")
    for key in args.schemes:
        for dtype in args.dtypes:
            print(f"mechest estimate process, {key} {dtype}: {process_seconds(key, dtype, 3):.2f} s")
    if args.load:
        load = subprocess.Popen([sys.executable, "-c", LOAD])
        try:
            time.sleep(2)
            report(measure(args.seeds, args.schemes, args.dtypes, args.repeats, args.mc_samples),
                   "beside a CPU-bound process")
        finally:
            load.kill()
            load.wait()


if __name__ == "__main__":
    main()
