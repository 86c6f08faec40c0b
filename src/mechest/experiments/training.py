"""Training a student on a teacher: mechanistic distillation against ordinary (sampled) distillation.

Both trainers run Adam on the student's weights and biases and differ only in the objective:

- mechanistic: the cumulant-propagation estimate of E‖S(x) − T(x)‖² (mechest.estimators.distill.expected_loss);
- sampled: the mean of ‖S(x) − T(x)‖² over a fresh minibatch of Gaussian inputs each step.

A step's cost is the FLOPs (mechest.flops) of its objective's forward and backward pass, counted once
(the operations do not depend on the weight values); the optimizer update, the same for both, is not
counted. Progress is measured by the *true* loss: a Monte Carlo mean of ‖S − T‖² over fixed held-out
inputs (seeded chunks, the same inputs at every evaluation), never seen in training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from mechest.errors import MechestError
from mechest.estimators.distill import (
    METHODS,
    expected_loss,
    init_student,
    parameters,
    sampled_loss,
    squared_error_network,
)
from mechest.estimators.montecarlo import chunk_generator, sample_moments
from mechest.flops import FlopCounter
from mechest.kprop import Scheme
from mechest.mlp import MLP
from mechest.progress import progress_bar

Objective = Callable[[MLP, int], torch.Tensor]
LR_SCHEDULES = ("constant", "cosine")
COSINE_FINAL_FRACTION = 0.01  # the cosine schedule ends at 1% of the initial learning rate
TEST_SEED = 2**62  # held-out inputs use a seed that minibatch seeds (small integers) never reach


@dataclass
class TrainingRun:
    """The record of one training run: true held-out loss (± standard error) against steps and FLOPs."""

    label: str
    flops_per_step: int
    steps: list[int] = field(default_factory=list)
    true_loss: list[float] = field(default_factory=list)
    stderr: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def flops(self) -> list[int]:
        return [step * self.flops_per_step for step in self.steps]

    def to_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops}


def mechanistic_objective(teacher: MLP, order: int = 2, variant: str = "simple", factored: bool = False,
                          method: str = "kprop") -> Objective:
    """Step-independent objective: the estimate of E‖S − T‖² (order K, or the Mehler closure)."""
    return lambda student, step: expected_loss(student, teacher, order, variant, factored=factored, method=method)


def sampled_objective(teacher: MLP, batch_size: int, seed: int = 0) -> Objective:
    """Minibatch objective: step s draws ``batch_size`` fresh inputs from the generator of chunk (seed, s)."""
    if batch_size < 1:
        raise MechestError(f"the batch size must be positive, got {batch_size}")

    def objective(student: MLP, step: int) -> torch.Tensor:
        generator = chunk_generator(seed, step, teacher.device)
        x = torch.randn(batch_size, teacher.input_dim, generator=generator, dtype=teacher.dtype, device=teacher.device)
        return sampled_loss(student, teacher, x)

    return objective


def true_loss(student: MLP, teacher: MLP, samples: int, seed: int = TEST_SEED) -> tuple[float, float]:
    """Monte Carlo E‖S − T‖² over ``samples`` fixed held-out inputs, and its standard error."""
    with torch.no_grad():
        moments = sample_moments(squared_error_network(student, teacher), samples, seed)
    return float(moments.mean[0]), float((moments.variance[0] / moments.count).sqrt())


def step_flops(student: MLP, objective: Objective) -> int:
    """FLOPs of one objective evaluation and its backward pass (gradients are discarded)."""
    with FlopCounter() as counter:
        objective(student, 0).backward()
    for tensor in parameters(student):
        tensor.grad = None
    return counter.total


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning rate of step ``step`` (0-based) out of ``steps``, as a fraction of the initial one:
    1 (constant), or f + (1 − f)(1 + cos(π·step/steps))/2 with f = COSINE_FINAL_FRACTION (cosine)."""
    if schedule not in LR_SCHEDULES:
        raise MechestError(f"unknown learning-rate schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant" or steps <= 0:
        return 1.0
    final = COSINE_FINAL_FRACTION
    return final + (1 - final) * (1 + math.cos(math.pi * step / steps)) / 2


def fit(
    student: MLP,
    teacher: MLP,
    objective: Objective,
    steps: int,
    *,
    lr: float,
    label: str,
    log_every: int,
    test_samples: int,
    flops_per_step: int | None = None,
    progress: bool = False,
    lr_schedule: str = "constant",
) -> TrainingRun:
    """Adam on ``objective`` for ``steps`` steps, updating the student in place; true loss every ``log_every``.
    The learning rate follows ``lr_schedule`` (``lr_factor``).

    ``flops_per_step`` is counted with ``step_flops`` unless given.
    """
    if steps < 0 or log_every < 1 or not lr > 0:
        raise MechestError(f"need steps >= 0, log_every >= 1 and lr > 0, got {steps}, {log_every}, {lr}")
    run = TrainingRun(label, flops_per_step or step_flops(student, objective))
    lr_factor(lr_schedule, 0, steps)  # rejects an unknown schedule before any work
    optimizer = torch.optim.Adam(parameters(student), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(lr_schedule, step, steps))

    def record(step: int, value: float) -> None:
        mean, stderr = true_loss(student, teacher, test_samples)
        run.steps.append(step)
        run.true_loss.append(mean)
        run.stderr.append(stderr)
        run.objective.append(value)

    record(0, float("nan"))
    start = time.perf_counter()
    with progress_bar(steps, desc=label, unit="step", shown=progress) as bar:
        for step in range(1, steps + 1):
            optimizer.zero_grad()
            loss = objective(student, step)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if not torch.isfinite(loss.detach()):
                raise MechestError(f"{label}: the loss became {float(loss.detach())} at step {step}; lower --lr")
            if step % log_every == 0 or step == steps:
                run.seconds += time.perf_counter() - start
                record(step, float(loss.detach()))
                bar.set_postfix(true_loss=f"{run.true_loss[-1]:.4g}")
                start = time.perf_counter()
            bar.update(1)
    run.seconds += time.perf_counter() - start
    return run


@dataclass(frozen=True)
class DistillConfig:
    """One mechanistic-vs-ordinary comparison: student width, optimiser and estimator settings."""

    width: int
    steps: int
    order: int = 2
    variant: str = "simple"
    factored: bool = False
    lr: float = 1e-2
    baseline_lr: float | None = None  # None: the same as lr
    batch_size: int = 256
    seed: int = 0
    log_every: int = 10
    test_samples: int = 1 << 14
    method: str = "kprop"
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        Scheme(self.order, self.variant, self.factored)
        lr_factor(self.lr_schedule, 0, self.steps)
        if self.method not in METHODS:
            raise MechestError(f"unknown distillation method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.order < 2:
            raise MechestError("mechanistic distillation needs order K >= 2")
        if self.width < 1 or self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise MechestError("student width, steps, batch size and log interval must be positive")
        if not self.lr > 0 or not (self.baseline_lr is None or self.baseline_lr > 0):
            raise MechestError(f"learning rates must be positive, got {self.lr} and {self.baseline_lr}")
        if self.test_samples < 2:
            raise MechestError(f"the held-out set needs at least 2 samples, got {self.test_samples}")


def mechanistic_label(config: DistillConfig) -> str:
    if config.method == "mehler":
        return "mechanistic, Mehler closure"
    factored = " factored" if config.factored else ""
    return f"mechanistic K={config.order} {config.variant}{factored}"


def distill(teacher: MLP, config: DistillConfig, *, baseline: bool = True,
            progress: bool = False) -> tuple[MLP, list[TrainingRun]]:
    """Train a student mechanistically; then, if ``baseline``, the same initial student on sampled minibatches
    with the same FLOP budget (as many whole steps as fit). Returns the mechanistic student and the runs.
    """
    student = init_student(teacher, config.width, config.seed)
    objective = mechanistic_objective(teacher, config.order, config.variant, config.factored, config.method)
    runs = [fit(student, teacher, objective, config.steps, lr=config.lr, label=mechanistic_label(config),
                log_every=config.log_every, test_samples=config.test_samples, progress=progress,
                lr_schedule=config.lr_schedule)]
    if baseline:
        ordinary = init_student(teacher, config.width, config.seed)
        sampled = sampled_objective(teacher, config.batch_size, config.seed)
        per_step = step_flops(ordinary, sampled)
        steps = runs[0].flops_per_step * config.steps // per_step
        if steps < 1:
            raise MechestError(f"one minibatch step ({per_step:.3g} FLOPs) costs more than the whole mechanistic "
                               f"budget; lower --batch-size")
        log_every = max(1, round(config.log_every * steps / config.steps))
        runs.append(fit(ordinary, teacher, sampled, steps, lr=config.baseline_lr or config.lr,
                        label=f"ordinary, batch {config.batch_size}", log_every=log_every,
                        test_samples=config.test_samples, flops_per_step=per_step, progress=progress,
                        lr_schedule=config.lr_schedule))
    return student, runs
