"""The ``mechest`` command-line tool: argument parsing and printing only (the maths lives elsewhere).

Errors in what the user passed are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from mechest.errors import MechestError
from mechest.estimate import DTYPES, METHODS, Estimate, estimate
from mechest.kprop import MAX_ORDER, VARIANTS
from mechest.demo import run_demo
from mechest.mlp import MAX_SEED, MLP, load, random_mlp
from mechest.tables import format_table
from mechest.truth import compute_truth, load_truth, score
from mechest.wick import ACTIVATION_NAMES

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"mechest: error: {message}\n")


def sample_count(text: str) -> int:
    """Parse a sample count such as 1000000 or 1e6; it must be a positive whole number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return int(value)


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
    """--weights FILE ("required", "optional" or "none"), and for a random He-init network --width/--depth/--activation."""
    if weights != "none":
        parser.add_argument("--weights", metavar="FILE.npz", required=weights == "required",
                            help="network file (format in README.md)")
    if weights == "required":
        return
    parser.add_argument("--width", type=int, default=64, help="width of a random He-init net (default 64)")
    parser.add_argument("--depth", type=int, default=4, help="hidden layers of a random net (default 4)")
    parser.add_argument("--activation", default="relu", help=f"one of {', '.join(ACTIVATION_NAMES)}")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="kprop")
    parser.add_argument("--order", "-K", type=int, default=2, help=f"kprop order K, 1..{MAX_ORDER} (default 2)")
    parser.add_argument("--variant", choices=VARIANTS, default="simple", help="kprop variant (default simple)")
    parser.add_argument("--factored", action="store_true",
                        help="carry the top cumulant in factored (CP) form (design §6; K = 3 simple so far)")
    parser.add_argument("--samples", type=sample_count, help="Monte Carlo sample count, e.g. 1e6")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="float64 (default for kprop) or float32")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="mechest", description="Estimate the expected output of random MLPs "
                           "by cumulant propagation (kprop) or Monte Carlo.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    demo = commands.add_parser("demo", help="kprop vs Monte Carlo on a width-256, 4-hidden-layer ReLU net")
    demo.add_argument("--width", type=int, default=256)
    demo.add_argument("--depth", type=int, default=4)
    demo.add_argument("--reference-samples", type=sample_count, default=2**18)
    demo.add_argument("--seed", type=seed_value, default=0)

    net = commands.add_parser("net", help="write a random He-init network to an .npz file")
    add_network_arguments(net, weights="none")
    net.add_argument("--seed", type=seed_value, default=0)
    net.add_argument("--init", choices=("he", "critical"), default="he")
    net.add_argument("--bias-mean", type=float, default=0.0)
    net.add_argument("--bias-var", type=float, default=0.0)
    net.add_argument("--out", required=True, metavar="FILE.npz")

    est = commands.add_parser("estimate", help="estimate the expected output of a network")
    add_network_arguments(est)
    est.add_argument("--seed", type=seed_value, default=0, help="Monte Carlo seed, and the random net's seed")
    add_method_arguments(est)

    truth = commands.add_parser("truth", help="long Monte Carlo ground truth, written to an .npz (resumable)")
    add_network_arguments(truth, weights="required")
    truth.add_argument("--samples", type=sample_count, required=True)
    truth.add_argument("--seed", type=seed_value, default=0)
    truth.add_argument("--out", required=True, metavar="TRUTH.npz")

    scoring = commands.add_parser("score", help="score an estimator against a truth file")
    add_network_arguments(scoring, weights="required")
    scoring.add_argument("--truth", required=True, metavar="TRUTH.npz")
    scoring.add_argument("--seed", type=seed_value, default=1, help="Monte Carlo seed (default 1)")
    add_method_arguments(scoring)
    add_distill_parser(commands)
    return parser


def add_distill_parser(commands: argparse._SubParsersAction) -> None:
    distill = commands.add_parser("distill", help="train a narrower student on a teacher by mechanistic distillation "
                                  "(and ordinary training at equal FLOPs)")
    distill.add_argument("--teacher", required=True, metavar="FILE.npz", help="teacher network file")
    distill.add_argument("--student-width", type=int, required=True, help="hidden width of the student")
    distill.add_argument("--steps", type=int, default=200, help="mechanistic Adam steps (default 200)")
    distill.add_argument("--order", "-K", type=int, default=2, help=f"kprop order K, 2..{MAX_ORDER} (default 2)")
    distill.add_argument("--variant", choices=VARIANTS, default="simple")
    distill.add_argument("--factored", action="store_true", help="factored propagation (K = 3 simple)")
    distill.add_argument("--method", choices=("kprop", "mehler"), default="kprop",
                         help="kprop: order-K propagation; mehler: Gaussian closure at every layer (default kprop)")
    distill.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    distill.add_argument("--baseline-lr", type=float, help="Adam learning rate of ordinary training (default --lr)")
    distill.add_argument("--batch-size", type=int, default=256, help="minibatch of ordinary training (default 256)")
    distill.add_argument("--no-baseline", action="store_true", help="skip ordinary training")
    distill.add_argument("--seed", type=seed_value, default=0, help="student init and minibatch seed")
    distill.add_argument("--log-every", type=int, default=10, help="mechanistic steps between true-loss evaluations")
    distill.add_argument("--test-samples", type=sample_count, default=1 << 14,
                         help="held-out Monte Carlo inputs for the true loss (default 16384)")
    distill.add_argument("--dtype", choices=tuple(DTYPES), default="float64")
    distill.add_argument("--out", required=True, metavar="STUDENT.npz", help="where to write the trained student")
    distill.add_argument("--plot", metavar="LOSS.png", help="true loss against training FLOPs")
    distill.add_argument("--json", metavar="LOG.json", help="write every run's log as JSON")


def network_from(args: argparse.Namespace) -> MLP:
    if args.weights is not None:
        return load(args.weights)
    return random_mlp(args.width, args.depth, args.activation, seed=args.seed)


def run_estimate(args: argparse.Namespace, net: MLP) -> Estimate:
    return estimate(net, args.method, order=args.order, variant=args.variant, factored=args.factored,
                    samples=args.samples,
                    seed=args.seed, dtype=args.dtype, progress=True)


def command_estimate(args: argparse.Namespace) -> None:
    result = run_estimate(args, network_from(args))
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    label = f"kprop K={result.order} {result.variant}" if result.method == "kprop" else f"mc N={result.samples}"
    print(f"{label}: {result.flops:.3e} FLOPs, {result.seconds:.3f} s")
    columns = [result.mean] + ([result.stderr] if result.stderr is not None else [])
    header = ["output", "mean"] + (["stderr"] if result.stderr is not None else [])
    rows = [[i] + [float(column[i]) for column in columns] for i in range(result.mean.numel())]
    print(format_table(header, rows))


def command_net(args: argparse.Namespace) -> None:
    net = random_mlp(args.width, args.depth, args.activation, init=args.init, bias_mean=args.bias_mean,
                     bias_var=args.bias_var, seed=args.seed)
    net.save(args.out)
    print(f"wrote {args.out}: widths {net.dims}, activations {net.activations}")


def command_truth(args: argparse.Namespace) -> None:
    truth = compute_truth(load(args.weights), args.samples, args.out, seed=args.seed, progress=True)
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


def command_distill(args: argparse.Namespace) -> None:
    from mechest.plots import plot_runs  # matplotlib loads only for this command
    from mechest.training import DistillConfig, distill

    teacher = load(args.teacher, dtype=DTYPES[args.dtype])
    config = DistillConfig(args.student_width, args.steps, args.order, args.variant, args.factored, args.lr,
                           args.baseline_lr, args.batch_size, args.seed, args.log_every, args.test_samples,
                           args.method)
    student, runs = distill(teacher, config, baseline=not args.no_baseline, progress=True)
    student.save(args.out)
    if args.plot:
        plot_runs(runs, args.plot, f"teacher {args.teacher} → student width {args.student_width}")
    if args.json:
        write_text_atomically(args.json, json.dumps([run.to_dict() for run in runs]))
    rows = [[run.label, run.steps[-1], run.flops[-1], run.true_loss[0], run.true_loss[-1], run.stderr[-1],
             run.true_loss[0] / run.true_loss[-1], run.seconds] for run in runs]
    print(format_table(["run", "steps", "FLOPs", "initial loss", "final loss", "stderr", "reduction", "seconds"], rows))
    print(f"wrote {args.out}")


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (never a half-written file)."""
    temporary = f"{path}.partial"
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise MechestError(f"cannot write {path}: {error.strerror or error}") from None


COMMANDS = {"estimate": command_estimate, "net": command_net, "truth": command_truth, "score": command_score,
            "demo": command_demo, "distill": command_distill}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except MechestError as error:
        print(f"mechest: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mechest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
