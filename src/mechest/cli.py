"""The ``mechest`` command-line tool: argument parsing and printing only (the maths lives elsewhere).

Errors in what the user passed are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import itertools
import json
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

import mechest
from mechest import results
from mechest.device import DEVICES, resolve_device
from mechest.errors import MechestError
from mechest.estimators.estimate import DTYPES, METHODS, Estimate, estimate
from mechest.estimators.montecarlo import ChunkRunner, RunningMoments, run_chunks_locally
from mechest.estimators.tail import METHODS as TAIL_METHODS
from mechest.estimators.tail import tail_probability
from mechest.estimators.truth import compute_truth, load_truth, score
from mechest.experiments import bench
from mechest.experiments.demo import run_demo
from mechest.experiments.training import LR_SCHEDULES
from mechest.files import atomic_path, check_output_directory, check_output_path
from mechest.integrations.whestbench.export import (
    DEFAULT_COMPRESSION,
    DEFAULT_STRASSEN,
    DEFAULT_THIN,
    PackageOptions,
    export_package,
    parse_compression,
    parse_prune,
    parse_thin,
)
from mechest.integrations.whestbench.score import ROUNDS as WHEST_ROUNDS
from mechest.integrations.whestbench.score import score_round
from mechest.kprop import ALL_VARIANTS, FACTORED_ONLY_VARIANTS, MAX_ORDER, VARIANTS, Scheme
from mechest.kprop.scheme import supported_list
from mechest.math.wick import ACTIVATION_NAMES
from mechest.mlp import MAX_SEED, MLP, load, random_mlp
from mechest.tables import format_table

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"mechest: error: {message}\n")


def package_version() -> str:
    """The installed distribution's version, or the source tree's ``mechest.__version__`` when not installed."""
    try:
        return importlib.metadata.version("mechest")
    except importlib.metadata.PackageNotFoundError:
        return mechest.__version__


def sample_count(text: str) -> int:
    """Parse a sample count such as 1000000 or 1e6; it must be a positive whole number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return int(value)


def whole_number(text: str, minimum: int) -> int:
    """Parse a whole number ≥ ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A count of workers (0: none)."""
    return whole_number(text, 0)


def positive_int(text: str) -> int:
    """A positive whole number (a chunk size)."""
    return whole_number(text, 1)


def seed_value(text: str) -> int:
    """Parse a seed: a whole number from 0 to 2^63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2^63 - 1, got {text}")
    return value


def add_network_arguments(parser: argparse.ArgumentParser, *, weights: str = "optional") -> None:
    """--weights FILE ("required", "optional" or "none"), and for a random He-init net --width/--depth/--activation."""
    if weights != "none":
        parser.add_argument("--weights", metavar="FILE.npz", required=weights == "required",
                            help="network file (format in README.md)")
    if weights == "required":
        return
    parser.add_argument("--width", type=int, default=64, help="width of a random He-init net (default 64)")
    parser.add_argument("--depth", type=int, default=4, help="hidden layers of a random net (default 4)")
    parser.add_argument("--activation", default="relu", help=f"one of {', '.join(ACTIVATION_NAMES)}")


def flop_budget(text: str) -> float:
    """Parse a FLOP budget such as 1e9: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of FLOPs such as 1e9, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number of FLOPs, got {text}")
    return value


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="kprop",
                        help="kprop: cumulant propagation (default); mc: Monte Carlo over --samples inputs")
    parser.add_argument("--order", "-K", type=int, help=f"kprop order K, 1..{MAX_ORDER} (default 2)")
    parser.add_argument("--variant", choices=ALL_VARIANTS,
                        help="kprop variant (default simple; isotropic: K = 1 only, the cheapest estimate; core: "
                             "factored K = 3 simple with κ_4 kept with a matrix core)")
    parser.add_argument("--factored", action="store_true",
                        help="carry the top cumulant in factored form (K = 3 simple, augment, core; K = 4 simple)")
    parser.add_argument("--budget", type=flop_budget, metavar="FLOPS",
                        help="kprop: run the scheme predicted to be most accurate within this many FLOPs (instead "
                             f"of --order/--variant/--factored; schemes: {supported_list()})")
    parser.add_argument("--samples", type=sample_count, help="Monte Carlo sample count, e.g. 1e6")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="float64 (default for kprop) or float32")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where to compute: cpu (default), cuda, or auto (cuda when available)")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers [N] and --scheduler ADDRESS: where Monte Carlo chunks run (read by ``chunk_runner``)."""
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=non_negative_int, nargs="?", const="auto", metavar="N",
                         help="run Monte Carlo chunks on an embedded Dask LocalCluster of N single-threaded worker "
                              "processes (default, or without N: one per CPU core, one on cuda); 0: in this "
                              "process, no cluster")
    cluster.add_argument("--scheduler", metavar="ADDRESS", help="run Monte Carlo chunks on the Dask cluster "
                         "whose scheduler is at ADDRESS, e.g. tcp://10.0.0.1:8786")


@contextmanager
def chunk_runner(args: argparse.Namespace, device: torch.device) -> Iterator[ChunkRunner]:
    """The ChunkRunner that ``add_cluster_arguments``' options ask for: this process (``--workers 0``), or a Dask
    cluster, opened when a chunk first needs computing (a run with nothing to compute starts none) and closed on
    exit. The result is the same bit for bit either way."""
    if args.workers == 0:
        yield run_chunks_locally
        return
    workers = None if args.workers in (None, "auto") else args.workers
    with ExitStack() as stack:
        runners: list[ChunkRunner] = []

        def run_on_cluster(net: MLP, seed: int, samples: int, chunk_size: int,
                           chunks: Iterable[int]) -> Iterator[tuple[int, RunningMoments]]:
            chunks = iter(chunks)  # lazily: a long run has billions of chunks
            first = next(chunks, None)
            if first is None:
                return
            chunks = itertools.chain([first], chunks)
            if not runners:
                # dask takes a second to import: only when a cluster is needed
                from mechest.integrations.dask import cluster_client, dask_runner

                runners.append(dask_runner(stack.enter_context(cluster_client(args.scheduler, workers, device))))
            yield from runners[0](net, seed, samples, chunk_size, chunks)

        yield run_on_cluster


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="mechest", description="Estimate the expected output of random MLPs "
                           "by cumulant propagation (kprop) or Monte Carlo.")
    parser.add_argument("--version", action="version", version=f"mechest {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    demo = commands.add_parser("demo", help="kprop vs Monte Carlo on a width-256, 4-hidden-layer ReLU net")
    demo.add_argument("--width", type=int, default=256, help="width of the demo network (default 256)")
    demo.add_argument("--depth", type=int, default=4, help="hidden layers of the demo network (default 4)")
    demo.add_argument("--reference-samples", type=sample_count, default=2**18,
                      help="Monte Carlo samples of the reference the estimates are scored against (default 262144)")
    demo.add_argument("--seed", type=seed_value, default=0,
                      help="network seed; the reference and Monte Carlo estimates use the next seeds (default 0)")

    net = commands.add_parser("net", help="write a random He-init network to an .npz file")
    add_network_arguments(net, weights="none")
    net.add_argument("--seed", type=seed_value, default=0, help="seed of the weights and biases (default 0)")
    net.add_argument("--init", choices=("he", "critical"), default="he",
                     help="he: weight variance 1 / E[φ(z)²] per layer (default); critical: the critical point q*")
    net.add_argument("--bias-mean", type=float, default=0.0, help="mean of every bias entry (default 0: no bias)")
    net.add_argument("--bias-var", type=float, default=0.0, help="variance of every bias entry (default 0)")
    net.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the network")

    est = commands.add_parser("estimate", help="estimate the expected output of a network")
    add_network_arguments(est)
    est.add_argument("--seed", type=seed_value, default=0, help="Monte Carlo seed, and the random net's seed")
    add_method_arguments(est)

    truth = commands.add_parser("truth", help="long Monte Carlo ground truth, written to an .npz (resumable)")
    add_network_arguments(truth, weights="required")
    truth.add_argument("--samples", type=sample_count, required=True, help="Monte Carlo sample count, e.g. 1e8")
    truth.add_argument("--seed", type=seed_value, default=0, help="Monte Carlo seed (default 0)")
    truth.add_argument("--out", required=True, metavar="TRUTH.npz",
                       help="truth file to write (checkpoint: TRUTH.npz.checkpoint.npz, lock: TRUTH.npz.lock)")
    truth.add_argument("--dtype", choices=tuple(DTYPES), default="float64", help="forward-pass dtype (default float64)")
    add_device_argument(truth)
    truth.add_argument("--chunk-size", type=positive_int,
                       help="samples per chunk (default 65536 on the CPU, sized to the GPU's memory on cuda)")
    add_cluster_arguments(truth)

    scoring = commands.add_parser("score", help="score an estimator against a truth file")
    add_network_arguments(scoring, weights="required")
    scoring.add_argument("--truth", required=True, metavar="TRUTH.npz", help="truth file written by `mechest truth`")
    scoring.add_argument("--seed", type=seed_value, default=1, help="Monte Carlo seed (default 1)")
    add_method_arguments(scoring)

    tail = commands.add_parser("tail", help="per-neuron tail probabilities P(z_i > t) of one layer")
    add_network_arguments(tail)
    tail.add_argument("--layer", type=int, required=True,
                      help="pre-activation of hidden layer L, from 1 (1 = W_0 x + b_0; depth + 1 = output)")
    tail.add_argument("--threshold", type=float, required=True, help="threshold t")
    tail.add_argument("--lower", action="store_true", help="estimate P(z_i < t) instead of P(z_i > t)")
    tail.add_argument("--method", choices=("kprop",) + TAIL_METHODS, default="kprop",
                      help=f"one of kprop, {', '.join(TAIL_METHODS)} (default kprop, the same as lpe: a Heaviside "
                           "unit propagated by kprop; mc: exceedance counts over --samples inputs)")
    tail.add_argument("--order", "-K", type=int, default=2, help=f"kprop order K, 1..{MAX_ORDER} (default 2)")
    tail.add_argument("--variant", choices=VARIANTS, default="simple", help="kprop variant (default simple)")
    tail.add_argument("--factored", action="store_true",
                      help="factored (CP) top cumulant: lpe at K = 3 and K = 4 simple, "
                           "edgeworth and saddlepoint at K = 3")
    tail.add_argument("--samples", type=sample_count, help="Monte Carlo sample count, e.g. 1e6")
    tail.add_argument("--seed", type=seed_value, default=0, help="Monte Carlo seed, and the random net's seed")
    tail.add_argument("--dtype", choices=tuple(DTYPES), help="float64 (default for kprop) or float32")
    tail.add_argument("--json", action="store_true", help="print one JSON object")
    tail_bench = commands.add_parser("tail-bench", help="the tail-probability experiment: every tail estimator "
                                     "against exact exceedance counts, at equal FLOPs with Monte Carlo")
    tail_bench.add_argument("--truths", default="benchmarks/data", metavar="DIR",
                            help="folder of tail_truth_seed{S}.npz files (default benchmarks/data)")
    tail_bench.add_argument("--seeds", type=seed_value, nargs="+", default=[0, 1], help="network seeds (default 0 1)")
    tail_bench.add_argument("--width", type=int, default=256, help="width (default 256)")
    tail_bench.add_argument("--depth", type=int, default=3, help="hidden ReLU layers (default 3)")
    tail_bench.add_argument("--make-truths", type=sample_count, metavar="SAMPLES",
                            help="count the truths of seeds that have none with SAMPLES inputs on this machine")
    tail_bench.add_argument("--results", default="results", help="results directory (default results)")
    tail_bench.add_argument("--replot", action="store_true", help="summarise the saved records of --seeds, run nothing")
    whest = commands.add_parser("whestbench", help="WhestBench entry: export our estimator, score it locally")
    whest_commands = whest.add_subparsers(dest="whest_command", required=True, parser_class=OneLineParser)
    export = whest_commands.add_parser("export", help="write a self-contained WhestBench estimator package")
    add_export_arguments(export)
    export.add_argument("--out", required=True, metavar="DIR", help="package folder to write (or an earlier export)")
    whest_score = whest_commands.add_parser("score", help="bake/reuse a local dataset; score us and the baselines")
    whest_score.add_argument("--round", choices=tuple(WHEST_ROUNDS), default="warmup",
                             help="the round whose width, depth, budget and rules apply (default warmup)")
    whest_score.add_argument("--n-mlps", type=sample_count, default=3, help="networks in the dataset (default 3)")
    whest_score.add_argument("--samples", type=sample_count, default=10**6, help="Monte Carlo samples per truth")
    whest_score.add_argument("--width", type=int, help="override the round's width (quick checks)")
    whest_score.add_argument("--depth", type=int, help="override the round's depth (quick checks)")
    whest_score.add_argument("--data-dir", default="results/whestbench", help="where datasets are cached")
    whest_score.add_argument("--truths", metavar="TRUTHS.npz",
                             help="replace the baked targets by longer Monte Carlo means (see docs/whestbench.md)")
    whest_score.add_argument("--flops-only", action="store_true",
                             help="price FLOPs only: no residual-time price or gate, no wall-time cap")
    add_export_arguments(whest_score)  # the package scored is exported with these options
    whest_score.add_argument("--json", action="store_true", help="print one JSON object")
    add_distill_parser(commands)
    add_suppress_parser(commands)
    sweep = commands.add_parser("bench", help="MSE-vs-compute benchmark of kprop against Monte Carlo (tables, "
                                "results store, figures)")
    sweep.add_argument("--quick", action="store_true", help="small widths and few samples (a few minutes)")
    sweep.add_argument("--widths", type=int, nargs="+", help="widths at the main depth (full: 16 32 64 128 256)")
    sweep.add_argument("--depth", type=int, help="hidden layers of the width sweep (default 4)")
    sweep.add_argument("--depths", type=int, nargs="+", help="depths of the depth sweep (default 1 2 3 4)")
    sweep.add_argument("--depth-width", type=int, help="width of the depth sweep (full: 64, quick: 16)")
    sweep.add_argument("--seeds", type=seed_value, nargs="+", help="network seeds (full: 0 1 2, quick: 0 1)")
    sweep.add_argument("--orders", type=int, nargs="+", help=f"kprop orders (full: 1..{MAX_ORDER}, quick: 1..3)")
    sweep.add_argument("--variants", choices=VARIANTS + FACTORED_ONLY_VARIANTS, nargs="+",
                       help="kprop variants (default all; core: factored K = 3 only)")
    sweep.add_argument("--truth-samples", type=sample_count, help="truth sample count (full: 1e8, quick: 1e6)")
    sweep.add_argument("--max-truth-flops", type=float, help="cap on a new truth's FLOPs: wide nets get fewer "
                       "samples unless a cached truth has enough (full: 1e12, quick: 5e10)")
    sweep.add_argument("--min-truth-samples", type=sample_count, help="skip a net with no cached truth when a new "
                       "one under --max-truth-flops would have fewer samples (full: 1e7, quick: 1e5)")
    sweep.add_argument("--max-flops", type=float, help="skip kprop configurations predicted above this many "
                       "FLOPs (full: 2e11, quick: 1.2e9)")
    sweep.add_argument("--mc-samples", type=sample_count, nargs="+", help="Monte Carlo sample counts "
                       "(full: 1e1 … 1e5)")
    sweep.add_argument("--repeats", type=int, help="timed runs per measurement, fastest kept (full: 2)")
    sweep.add_argument("--dtype", choices=tuple(DTYPES), help="kprop precision (default float64)")
    sweep.add_argument("--results", type=Path, help="results directory (default results)")
    sweep.add_argument("--truths", type=Path, nargs="+", default=[],
                       help="extra directories of cached truth files (<fingerprint>-<samples>.npz)")
    sweep.add_argument("--no-plots", action="store_true", help="skip the figures")
    add_device_argument(sweep)
    add_cluster_arguments(sweep)
    sweep.add_argument("--report", nargs="+", metavar="RUN_ID", help="run nothing: summarise and plot the rows "
                       "of these earlier runs from the results directory (e.g. a width-256 run and the rest)")

    listing = commands.add_parser("results", help="print the runs table of a results directory")
    listing.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    listing.add_argument("--where", nargs="+", default=[], metavar="COLUMN=VALUE", help="keep matching rows")
    listing.add_argument("--columns", nargs="+", metavar="COLUMN", help="columns to print (default: a summary)")
    listing.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    return parser


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--order", type=int, default=3, help="highest order K the package may use (1-3)")
    parser.add_argument("--budget-fraction", type=float, default=1.0,
                        help="largest predicted FLOPs as a fraction of the budget (default 1: any order that fits "
                             "and is predicted to score best)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="never use K=2 augment (by default it replaces K=2 simple where width/depth >= 16)")
    parser.add_argument("--min-window", type=int, default=0,
                        help="if K=3 over all layers does not fit, carry κ_3 through the last m >= this many "
                             "layers instead (0, the default: never)")
    parser.add_argument("--compress", default=",".join(map(str, DEFAULT_COMPRESSION)), metavar="AGE,FRACTION,POWER",
                        help="K=3 keeps the AGE newest κ_3 sources exact and compresses older ones to rank "
                             "FRACTION×width, where exact K=3 would cost over 0.1 of the budget; 'none': never "
                             "(default %(default)s)")
    parser.add_argument("--strassen", type=int, default=None,
                        help="K=3's n^3 products by up to this many levels of Strassen's recursion, the cheapest "
                             "predicted, at width >= 512 (the package's STRASSEN_MIN_WIDTH) (0: dense; default "
                             f"{DEFAULT_STRASSEN}, 0 with --prune)")
    parser.add_argument("--thin", default=",".join(map(str, DEFAULT_THIN)), metavar="RANK,POWER",
                        help="K=3 carries each κ_3 source's correction leg thin, its residual at rank RANK (POWER "
                             "range-finder iterations), wherever it runs; 'none': never (default %(default)s)")
    parser.add_argument("--prune", default="none", metavar="SIGMAS",
                        help="the planned schemes drop units whose pre-activation mean is more than SIGMAS standard "
                             "deviations below zero from the covariance and κ_3 they carry; 'none' (the default): "
                             "keep every unit (at 1024x16, 4 saves 3.5%% of the FLOPs but adds ≈ 0.1 s of residual)")


def package_options(args: argparse.Namespace) -> PackageOptions:
    """The package options of `whestbench export` and `score`, parsed once."""
    return PackageOptions(args.order, args.budget_fraction, args.min_window, augment=args.augment,
                          compression=parse_compression(args.compress), strassen=args.strassen,
                          thin=parse_thin(args.thin), prune=parse_prune(args.prune))


def add_distill_parser(commands: argparse._SubParsersAction) -> None:
    distill = commands.add_parser("distill", help="train a narrower student on a teacher by mechanistic distillation "
                                  "(and ordinary training at equal FLOPs)")
    distill.add_argument("--teacher", required=True, metavar="FILE.npz", help="teacher network file")
    distill.add_argument("--student-width", type=int, required=True, help="hidden width of the student")
    distill.add_argument("--steps", type=int, default=200, help="mechanistic Adam steps (default 200)")
    distill.add_argument("--order", "-K", type=int, default=2, help=f"kprop order K, 2..{MAX_ORDER} (default 2)")
    distill.add_argument("--variant", choices=VARIANTS, default="simple", help="kprop variant (default simple)")
    distill.add_argument("--factored", action="store_true", help="factored propagation (K = 3 simple)")
    distill.add_argument("--method", choices=("kprop", "mehler"), default="kprop",
                         help="kprop: order-K propagation; mehler: Gaussian closure at every layer (default kprop)")
    distill.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    distill.add_argument("--baseline-lr", type=float, help="Adam learning rate of ordinary training (default --lr)")
    distill.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                         help="constant, or cosine decay to 1%% of --lr over the run (both trainers; default constant)")
    distill.add_argument("--batch-size", type=int, default=256, help="minibatch of ordinary training (default 256)")
    distill.add_argument("--no-baseline", action="store_true", help="skip ordinary training")
    distill.add_argument("--seed", type=seed_value, default=0, help="student init and minibatch seed")
    distill.add_argument("--log-every", type=int, default=10, help="mechanistic steps between true-loss evaluations")
    distill.add_argument("--test-samples", type=sample_count, default=1 << 14,
                         help="held-out Monte Carlo inputs for the true loss (default 16384)")
    distill.add_argument("--dtype", choices=tuple(DTYPES), default="float64",
                         help="precision of teacher, student and training (default float64)")
    add_device_argument(distill)
    distill.add_argument("--out", required=True, metavar="STUDENT.npz", help="where to write the trained student")
    distill.add_argument("--plot", metavar="LOSS.png", help="true loss against training FLOPs")
    distill.add_argument("--json", metavar="LOG.json", help="write every run's log as JSON")


def add_suppress_parser(commands: argparse._SubParsersAction) -> None:
    suppress = commands.add_parser("suppress", help="fine-tune a network so that a rare event P(z_i > t) falls, "
                                   "keeping its function within --max-change (both estimated mechanistically)")
    suppress.add_argument("--weights", required=True, metavar="FILE.npz", help="network file (format in README.md)")
    suppress.add_argument("--layer", type=int, required=True,
                          help="pre-activation of hidden layer L, from 1 (1 = W_0 x + b_0; depth + 1 = output)")
    suppress.add_argument("--threshold", type=float, required=True, help="threshold t")
    suppress.add_argument("--units", type=int, nargs="+", metavar="I",
                          help="units of the layer to suppress (default: every unit whose event is not already ~0)")
    suppress.add_argument("--lower", action="store_true", help="suppress P(z_i < t) instead of P(z_i > t)")
    suppress.add_argument("--max-change", type=float, default=0.01,
                          help="bound on E|M'(x) - M(x)|^2 / tr Cov M(x) (default 0.01)")
    suppress.add_argument("--steps", type=int, default=100, help="descent steps (default 100)")
    suppress.add_argument("--lr", type=float, default=0.03,
                          help="step length in parameter space, decayed by a cosine to 1%% (default 0.03)")
    suppress.add_argument("--order", "-K", type=int, default=3,
                          help="kprop order of the marginal cumulants, 2 or 3 (default 3, factored)")
    suppress.add_argument("--variant", choices=VARIANTS, default="simple", help="kprop variant (default simple)")
    suppress.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the fine-tuned network")
    suppress.add_argument("--json", action="store_true", help="print one JSON object")


def network_from(args: argparse.Namespace) -> MLP:
    if args.weights is not None:
        return load(args.weights)
    return random_mlp(args.width, args.depth, args.activation, seed=args.seed)


def scheme_from(args: argparse.Namespace) -> Scheme | None:
    """The kprop scheme that --order/--variant/--factored name (K = 2 simple by default); None with --budget, which
    chooses it."""
    named = args.order is not None or args.variant is not None or args.factored
    if args.budget is not None:
        if args.method != "kprop":
            raise MechestError("--budget chooses a kprop scheme; it does not apply to --method mc")
        if named:
            raise MechestError("give either --budget or --order/--variant/--factored, not both")
        return None
    if args.method == "mc" and named:
        raise MechestError("--order/--variant/--factored are kprop options; --method mc does not use them")
    return Scheme(2 if args.order is None else args.order, args.variant or "simple", args.factored)


def run_estimate(args: argparse.Namespace, net: MLP) -> Estimate:
    return estimate(net, args.method, scheme=scheme_from(args), budget=args.budget, samples=args.samples,
                    seed=args.seed, dtype=args.dtype, device=args.device, progress=True)


def command_estimate(args: argparse.Namespace) -> None:
    result = run_estimate(args, network_from(args))
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    label = f"kprop {result.scheme}" if result.method == "kprop" else f"mc N={result.samples}"
    print(f"{label}: {result.flops:.3e} FLOPs, {result.seconds:.3f} s")
    columns = [result.mean] + ([result.stderr] if result.stderr is not None else [])
    header = ["output", "mean"] + (["stderr"] if result.stderr is not None else [])
    rows = [[i] + [float(column[i]) for column in columns] for i in range(result.mean.numel())]
    print(format_table(header, rows))


def command_net(args: argparse.Namespace) -> None:
    check_output_path(args.out)
    net = random_mlp(args.width, args.depth, args.activation, init=args.init, bias_mean=args.bias_mean,
                     bias_var=args.bias_var, seed=args.seed)
    net.save(args.out)
    print(f"wrote {args.out}: widths {net.dims}, activations {net.activations}")


def command_truth(args: argparse.Namespace) -> None:
    net = load(args.weights)
    check_output_path(args.out)
    device = resolve_device(args.device)
    with chunk_runner(args, device) as runner:
        truth = compute_truth(net, args.samples, args.out, seed=args.seed, chunk_size=args.chunk_size,
                              dtype=DTYPES[args.dtype], device=device, runner=runner, progress=True)
    stderr = (truth.variance / truth.samples) ** 0.5
    print(f"wrote {args.out}: {truth.samples} samples, mean standard error {stderr.mean():.3g}")


def command_score(args: argparse.Namespace) -> None:
    net = load(args.weights)
    truth = load_truth(args.truth)
    if truth.fingerprint != net.fingerprint():
        raise MechestError(f"{args.truth} was computed for a different network than {args.weights}")
    if args.method == "mc" and args.seed == truth.seed:
        raise MechestError(f"--seed {args.seed} is the truth's own seed: the estimate would reuse its samples")
    result = run_estimate(args, net)
    measured = score(result.mean, truth)
    record = {**result.to_dict(), **measured.to_dict(), "truth_samples": truth.samples}
    del record["mean"]
    if args.json:
        print(json.dumps(record))
        return
    print(format_table(["quantity", "value"], [[key, value] for key, value in record.items()
                                                if key not in ("stderr",)]))


def command_demo(args: argparse.Namespace) -> None:
    if args.reference_samples < 2:
        raise MechestError("--reference-samples must be at least 2 (the reference needs a variance)")
    print(run_demo(args.width, args.depth, args.reference_samples, args.seed))


def command_tail(args: argparse.Namespace) -> None:
    method = "lpe" if args.method == "kprop" else args.method
    result = tail_probability(network_from(args), args.layer, args.threshold, method, upper=not args.lower,
                              order=args.order, variant=args.variant, factored=args.factored,
                              samples=args.samples, seed=args.seed, dtype=args.dtype, progress=True)
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    event = f"z < {result.threshold:g}" if args.lower else f"z > {result.threshold:g}"
    label = f"mc N={result.samples}" if method == "mc" else f"{method} K={result.order} {result.variant}"
    print(f"P({event}) at layer {result.layer}, {label}: {result.flops:.3e} FLOPs, {result.seconds:.3f} s")
    if result.clipped:
        print(f"note: {result.clipped} raw estimates fell outside [0, 1] and were clipped")
    columns = [result.prob] + ([result.low, result.high] if method == "mc" else [])
    header = ["neuron", "prob"] + (["95% low", "95% high"] if method == "mc" else [])
    rows = [[i] + [float(column[i]) for column in columns] for i in range(result.prob.numel())]
    print(format_table(header, rows))


def command_tail_bench(args: argparse.Namespace) -> None:
    from mechest.experiments.tail_bench import TailBenchSettings, make_truth, markdown_table, plot, run_tail_bench

    if args.width < 1 or args.depth < 1:
        raise MechestError("--width and --depth must be positive")
    check_output_directory(args.results)
    if args.make_truths and not args.replot:
        check_output_directory(args.truths)
    settings = TailBenchSettings(width=args.width, depth=args.depth, layers=tuple(sorted({2, args.depth + 1})),
                                 seeds=tuple(args.seeds), truths=Path(args.truths), results=Path(args.results))
    if args.make_truths and not args.replot:
        for seed in settings.seeds:
            if not settings.truth_path(seed).is_file():
                print(f"wrote {make_truth(settings, seed, args.make_truths)}", flush=True)
    records, summary, ladders = run_tail_bench(settings, rerun=not args.replot)
    print(markdown_table(summary))
    for ladder in ladders:
        median = "–" if ladder["median_rel_error"] is None else f"{ladder['median_rel_error']:.1%}"
        print(f"budget ladder, layer {ladder['layer']}: median relative error {median} over {ladder['covered']} "
              f"band neurons; {ladder['uncovered']} band neurons have a budget no ladder method fits")
    for path in plot(records, settings, settings.results / "figures" / f"tail_bench{settings.tag}"):
        print(f"wrote {path}")


def command_whestbench(args: argparse.Namespace) -> None:
    if args.whest_command == "export":
        out = export_package(args.out, package_options(args))
        print(f"wrote {out}: check it with `whest validate --estimator {out / 'estimator.py'}`")
        return
    root = check_output_directory(args.data_dir)
    truths = Path(args.truths) if args.truths else None
    rows, floor, dataset = score_round(args.round, args.n_mlps, args.samples, root, root / "package",
                                       args.width, args.depth, truths, args.flops_only, package_options(args))
    if args.json:
        print(json.dumps({"round": args.round, "dataset": str(dataset),
                          "noise_floor": floor, "results": [row.__dict__ for row in rows]}))
        return
    ours = rows[0].score
    rules = "FLOPs only" if args.flops_only else f"{args.round} rules"
    print(f"{args.round} ({rules}): {dataset} ({args.n_mlps} MLPs, noise floor avg_variance/S = {floor:.3g})")
    print(format_table(["estimator", "score", "final MSE", "MSE/noise floor", "FLOPs", "effective compute",
                        "failed", "max s", "max residual s", "score / ours"],
                       [[r.name, r.score, r.final_mse, r.final_mse / floor, r.flops, r.effective_compute, r.failed,
                         r.seconds, r.residual_seconds, r.score / ours] for r in rows]))


def command_distill(args: argparse.Namespace) -> None:
    from mechest.experiments.training import DistillConfig, distill
    from mechest.experiments.training_plots import image_format, plot_runs  # matplotlib loads only for this command

    outputs = [check_output_path(path).resolve() for path in (args.out, args.plot, args.json) if path]
    if len(set(outputs)) < len(outputs):
        raise MechestError("--out, --plot and --json must name different files")
    plot_format = image_format(args.plot) if args.plot else None
    teacher = load(args.teacher, dtype=DTYPES[args.dtype]).to(device=resolve_device(args.device))
    config = DistillConfig(args.student_width, args.steps, args.order, args.variant, args.factored, args.lr,
                           args.baseline_lr, args.batch_size, args.seed, args.log_every, args.test_samples,
                           args.method, args.lr_schedule)
    student, runs = distill(teacher, config, baseline=not args.no_baseline, progress=True)
    with ExitStack() as written:  # each output goes to a temporary file first: all of them are written, or none
        student.save(written.enter_context(atomic_path(args.out)))
        if args.plot:
            plot_runs(runs, written.enter_context(atomic_path(args.plot)),
                      f"teacher {args.teacher} → student width {args.student_width}", plot_format)
        if args.json:
            written.enter_context(atomic_path(args.json)).write_text(json.dumps([run.to_dict() for run in runs]))
    rows = [[run.label, run.steps[-1], run.flops[-1], run.true_loss[0], run.true_loss[-1], run.stderr[-1],
             run.true_loss[0] / run.true_loss[-1], run.seconds] for run in runs]
    print(format_table(["run", "steps", "FLOPs", "initial loss", "final loss", "stderr", "reduction", "seconds"], rows))
    print(f"wrote {args.out}")


def command_suppress(args: argparse.Namespace) -> None:
    from mechest.experiments.suppress import suppress

    net = load(args.weights)
    out = check_output_path(args.out)
    if args.steps < 1:
        raise MechestError(f"--steps must be positive, got {args.steps}")
    result = suppress(net, args.layer, args.threshold, args.units, lower=args.lower, max_change=args.max_change,
                      steps=args.steps, lr=args.lr, order=args.order, variant=args.variant, progress=True)
    result.net.save(out)
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    event = f"z < {result.threshold:g}" if args.lower else f"z > {result.threshold:g}"
    print(f"P({event}) at layer {result.layer} (saddlepoint, K={args.order} {args.variant}): {result.steps} steps, "
          f"{result.flops:.3e} FLOPs, {result.seconds:.1f} s")
    rows = [[unit, before, after, before / after if after > 0 else float("inf")]
            for unit, before, after in zip(result.units, result.prob_before.tolist(), result.prob_after.tolist())]
    print(format_table(["unit", "prob before", "prob after", "fall"], rows))
    print(f"function change E|M' - M|^2 / tr Cov M = {result.function_change:.4g} (bound {result.max_change:g}), "
          f"estimated")
    print(f"wrote {out}")


def command_bench(args: argparse.Namespace) -> None:
    base = bench.QUICK if args.quick else bench.BenchSettings()
    settings = bench.with_overrides(
        base, widths=tuple(args.widths) if args.widths else None, depth=args.depth,
        depths=tuple(args.depths) if args.depths else None, depth_width=args.depth_width,
        seeds=tuple(args.seeds) if args.seeds else None, orders=tuple(args.orders) if args.orders else None,
        variants=tuple(args.variants) if args.variants else None, truth_samples=args.truth_samples,
        max_truth_flops=args.max_truth_flops, min_truth_samples=args.min_truth_samples, max_flops=args.max_flops,
        mc_samples=tuple(args.mc_samples) if args.mc_samples else None, repeats=args.repeats, dtype=args.dtype,
        results=args.results, truth_dirs=tuple(args.truths), plots=not args.no_plots, device=args.device)
    if settings.plots or not args.report:
        check_output_directory(settings.results)
    if args.report:
        wanted = set(args.report)
        rows = [row for row in results.read_runs(settings.results).to_pylist() if row["run_id"] in wanted]
        missing = wanted - {row["run_id"] for row in rows}
        if missing:
            raise MechestError(f"no rows of run {sorted(missing)[0]} in {results.runs_dir(settings.results)}")
    else:
        with chunk_runner(args, resolve_device(args.device)) as runner:
            run_id, rows, _ = bench.run_bench(settings, runner=runner)
        print(f"\nrun {run_id}: {len(rows)} rows written to {results.runs_dir(settings.results)}")
    print(format_table(*bench.summary_table(rows, settings)))
    print("\nMSE against width (log-log slopes):")
    print("\n".join(bench.width_slopes(rows, settings)))
    print("\nHeadline:")
    print("\n".join(bench.headline_summary(rows, *settings.headline)))
    if settings.plots:
        from mechest.experiments.plots import make_plots  # matplotlib is imported only when plotting

        paths = make_plots(rows, settings, results.figures_dir(settings.results))
        print(f"\nfigures: {', '.join(str(path) for path in paths)}")


SUMMARY_COLUMNS = ("run_id", "width", "depth", "net_seed", "method", "order", "variant", "factored", "samples",
                   "flops_raw", "seconds", "mse_over_var")


def command_results(args: argparse.Namespace) -> None:
    columns = args.columns or list(SUMMARY_COLUMNS)
    unknown = [column for column in columns if column not in results.COLUMNS]
    if unknown:
        raise MechestError(f"unknown column {unknown[0]!r}; expected among {', '.join(results.COLUMNS)}")
    filters = [results.parse_filter(text) for text in args.where]
    rows = results.filter_rows(results.read_runs(args.results).to_pylist(), filters)
    table = [[row[column] for column in columns] for row in rows]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(table)
        return
    print(format_table(columns, table))
    print(f"{len(rows)} rows")


COMMANDS = {"estimate": command_estimate, "net": command_net, "truth": command_truth, "score": command_score,
            "demo": command_demo, "bench": command_bench, "results": command_results, "tail": command_tail,
            "tail-bench": command_tail_bench, "whestbench": command_whestbench, "distill": command_distill,
            "suppress": command_suppress}


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, batch schedulers), raised like Ctrl-C so that whatever saves work on Ctrl-C (the
    truth checkpoint) saves it on SIGTERM too."""


@contextmanager
def sigterm_raises_terminated() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises Terminated there; the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # bare `mechest`: the commands and options rather than a one-line complaint
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        with sigterm_raises_terminated():
            COMMANDS[args.command](args)
    except MechestError as error:
        print(f"mechest: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print("mechest: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("mechest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
