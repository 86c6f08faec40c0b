"""Mechanistic vs ordinary distillation at equal training FLOPs (issue 6's experiment).

For each (student width, depth): one He-init ReLU teacher of width 256 (input 32, output 8, seed 0), one
He-init student (seed 0) trained from the same start by

- mechanistic distillation at each requested order K (Adam, --steps steps),
- ordinary distillation on fresh Gaussian minibatches (Adam, same lr) with the largest mechanistic budget,

and the true held-out loss (2^14 fixed inputs) logged along the way. Writes one PNG per configuration, a
JSON log, and prints a markdown table: each mechanistic run's final loss next to ordinary training's loss
at the same FLOPs (its last evaluation within that budget).

    python benchmarks/distill_experiment.py --widths 64 --depths 2 --orders 2 3 --steps 300 --out results/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mechest.estimators.distill import init_student
from mechest.experiments.training import (
    LR_SCHEDULES,
    TrainingRun,
    fit,
    mechanistic_objective,
    sampled_objective,
    step_flops,
)
from mechest.experiments.training_plots import plot_runs
from mechest.mlp import random_mlp

TEACHER_WIDTH, INPUT_DIM, OUTPUT_DIM = 256, 32, 8


def loss_within_budget(run: TrainingRun, budget: int) -> tuple[float, float, int]:
    """The last evaluation of ``run`` at or below ``budget`` FLOPs: (loss, stderr, FLOPs)."""
    index = max(i for i, flops in enumerate(run.flops) if flops <= budget)
    return run.true_loss[index], run.stderr[index], run.flops[index]


def experiment(width: int, depth: int, orders: list[int], steps: int, args: argparse.Namespace) -> list[TrainingRun]:
    """The mechanistic runs (one per order, then Mehler if asked) and ordinary training at the largest budget."""
    teacher = random_mlp(TEACHER_WIDTH, depth, "relu", input_dim=INPUT_DIM, output_dim=OUTPUT_DIM, seed=0)
    runs = []
    estimators = [(f"mechanistic K={order}" + (" (factored)" if order == 3 else ""),
                   mechanistic_objective(teacher, order, factored=order == 3)) for order in orders]
    if args.mehler:
        estimators.append(("mechanistic, Mehler closure", mechanistic_objective(teacher, method="mehler")))
    for label, objective in estimators:  # K = 3 runs factored: Θ(n³L²) instead of Θ(n⁴L)
        student = init_student(teacher, width, seed=0)
        runs.append(fit(student, teacher, objective, steps, lr=args.lr, label=label, log_every=args.log_every,
                        test_samples=args.test_samples, progress=True, lr_schedule=args.lr_schedule))
    budget = max(run.flops[-1] for run in runs)
    student = init_student(teacher, width, seed=0)
    objective = sampled_objective(teacher, args.batch_size, seed=0)
    per_step = step_flops(student, objective)
    ordinary_steps = budget // per_step
    log_every = max(1, ordinary_steps * args.log_every // steps)
    runs.append(fit(student, teacher, objective, ordinary_steps, lr=args.lr, label=f"ordinary, batch {args.batch_size}",
                    log_every=log_every, test_samples=args.test_samples, flops_per_step=per_step, progress=True,
                    lr_schedule=args.lr_schedule))
    return runs


def table_rows(width: int, depth: int, runs: list[TrainingRun]) -> list[str]:
    ordinary = runs[-1]
    rows = []
    for run in runs[:-1]:
        loss, stderr, _ = loss_within_budget(ordinary, run.flops[-1])
        rows.append(
            f"| {width} | {depth} | {run.label} | {run.steps[-1]} | {run.flops[-1]:.2e} | {run.true_loss[0]:.3g} | "
            f"{run.true_loss[-1]:.3g} ± {run.stderr[-1]:.2g} | {run.true_loss[0] / run.true_loss[-1]:.1f}x | "
            f"{loss:.3g} ± {stderr:.2g} | {run.seconds:.0f} s |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64])
    parser.add_argument("--depths", type=int, nargs="+", default=[2])
    parser.add_argument("--orders", type=int, nargs="*", default=[2, 3])
    parser.add_argument("--mehler", action="store_true", help="also train on the Mehler-closure estimate")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--test-samples", type=int, default=1 << 14)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("distill-results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, logs = [], {}
    for depth in args.depths:
        for width in args.widths:
            runs = experiment(width, depth, args.orders, args.steps, args)
            name = f"distill_w{width}_d{depth}"
            plot_runs(runs, args.out / f"{name}.png",
                      f"teacher width {TEACHER_WIDTH} → student width {width}, {depth} hidden layers (ReLU)")
            logs[name] = [run.to_dict() for run in runs]
            rows += table_rows(width, depth, runs)
            print("\n".join(rows[-(len(runs) - 1):]), flush=True)
    (args.out / "distill_log.json").write_text(json.dumps(logs))
    print("| student width | depth | method | steps | FLOPs | initial loss | final loss | reduction "
          "| ordinary at equal FLOPs | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
