"""``mechest bench``: the MSE-versus-compute benchmark of kprop against Monte Carlo (docs/method.md §10.3).

A sweep over networks (He-init, one activation): widths at a fixed depth, plus depths at a fixed width; seeds
per (width, depth). For every network:

- a Monte Carlo ground truth, looked up in the truth caches (``<fingerprint>-<N>.npz`` or the 16-character
  prefix of the fingerprint, and the checkpoints of unfinished truth runs; the one with the most samples, if
  at least the wanted count) or computed once into ``RESULTS/truths``; the wanted count is
  min(samples, max_truth_flops / forward FLOPs);
- every kprop configuration (order K, variant, factored) that is implemented and whose predicted FLOPs stay
  under the cap, timed (fastest of ``repeats`` runs) and scored; FLOPs counted raw and discounted
  (mechest.flops);
- Monte Carlo at several sample counts N, timed and scored the same way.

Rows go to the results store (mechest.results), one part file per network. Monte Carlo needs
N = 1 / (MSE/Var) samples, i.e. forward / (MSE/Var) FLOPs, to reach a given MSE/Var; that is the line the
kprop points are compared with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mechest.errors import MechestError
from mechest.estimators.budget import count_flops, predicted_flops
from mechest.estimators.estimate import Estimate, estimate
from mechest.estimators.montecarlo import ChunkRunner, run_chunks_locally
from mechest.estimators.truth import Truth, compute_truth, load_truth, score
from mechest.kprop import FACTORED_ONLY_VARIANTS, MAX_ORDER, SCHEMES, VARIANTS, Scheme
from mechest.mlp import MLP, random_mlp, read_npz
from mechest.progress import LogProgress, progress_bar
from mechest.results import machine_description, make_directory, new_run_id, truths_dir, utc_now, write_part

TRUTH_SEED_OFFSET = 1000  # truth of the net with seed s uses seed 1000 + s (as the project's cached truths)
MC_SEED_OFFSET = 5000  # Monte Carlo estimates of net s use seed 5000 + s: never the truth's samples
MIN_TRUTH_SAMPLES = 1000
CHECKPOINT_SUFFIX = ".npz.checkpoint.npz"  # mechest.estimators.truth.checkpoint_path of OUT.npz


BENCH_VARIANTS = VARIANTS + FACTORED_ONLY_VARIANTS
"""The variants a bench runs by default (K = 1 isotropic comes with K = 1)."""


def all_configs(orders: Iterable[int] = range(1, MAX_ORDER + 1),
                variants: Iterable[str] = BENCH_VARIANTS) -> list[Scheme]:
    """The schemes of mechest.kprop.SCHEMES with those orders, in those variants (K = 1 isotropic with K = 1)."""
    orders, variants = set(orders), set(variants)
    return [scheme for scheme in SCHEMES
            if scheme.order in orders and (scheme.variant in variants or scheme.order == 1)]


def bench_flops(net: MLP, config: Scheme) -> FlopCount:
    """Raw and discounted FLOPs of propagating ``net`` at ``config`` (mechest.estimators.budget.count_flops)."""
    return FlopCount(*count_flops(net, config, discount=True))


@dataclass(frozen=True)
class FlopCount:
    raw: int
    discounted: float


def checkpoint_truth(path: Path) -> Truth:
    """The truth so far of an unfinished ``compute_truth`` run, read from its checkpoint: a valid truth with
    the samples done so far (population variance M2 / count)."""
    data = read_npz(path)
    try:
        count = int(data["count"])
        return Truth(data["mean"], data["m2"] / max(count, 1), count, int(data["seed"]), str(data["fingerprint"]))
    except (KeyError, TypeError, ValueError) as error:
        raise MechestError(f"cannot read {path}: not a mechest truth checkpoint ({error})") from None


def cached_truths(net: MLP, directories: Sequence[Path]) -> list[Truth]:
    """Truths of ``net`` in ``directories``, most samples first: finished files ``<fingerprint>-<N>.npz``
    (or the 16-character prefix of the fingerprint) and the checkpoints of unfinished runs."""
    fingerprint = net.fingerprint()
    found = []
    for directory in directories:
        for path in Path(directory).glob(f"{fingerprint[:16]}*-*.npz"):
            is_checkpoint = path.name.endswith(CHECKPOINT_SUFFIX)
            stem = path.name[: -len(CHECKPOINT_SUFFIX if is_checkpoint else ".npz")]
            prefix, _, count = stem.rpartition("-")
            if count.isdigit() and fingerprint.startswith(prefix) and not path.name.endswith(".partial.npz"):
                truth = checkpoint_truth(path) if is_checkpoint else load_truth(path)
                if truth.fingerprint == fingerprint and truth.samples > 0:
                    found.append(truth)
    return sorted(found, key=lambda truth: truth.samples, reverse=True)


def find_truth(net: MLP, wanted: int, directories: Sequence[Path]) -> Truth | None:
    """The cached truth of ``net`` with the most samples, if it has at least ``wanted``; else None."""
    truths = cached_truths(net, directories)
    return truths[0] if truths and truths[0].samples >= wanted else None


def wanted_truth_samples(net: MLP, samples: int, max_truth_flops: float) -> int:
    return max(MIN_TRUTH_SAMPLES, min(samples, int(max_truth_flops // net.flops_per_sample())))


def ground_truth(
    net: MLP, seed: int, settings: BenchSettings, runner: ChunkRunner = run_chunks_locally
) -> Truth | None:
    """A cached truth with enough samples, or a new one computed into RESULTS/truths (float32 forward pass,
    float64 accumulation; mechest.estimators.truth); None when a new one would have fewer than min_truth_samples
    samples under the truth FLOP cap (too noisy to score the best estimates). Chunks run on ``runner`` (this
    process, or a Dask cluster) and ``settings.device``."""
    wanted = wanted_truth_samples(net, settings.truth_samples, settings.max_truth_flops)
    own = make_directory(truths_dir(settings.results))
    cached = find_truth(net, wanted, [own, *settings.truth_dirs])
    if cached is not None:
        return cached
    if wanted < settings.min_truth_samples:
        return None
    return compute_truth(net, wanted, own / f"{net.fingerprint()}-{wanted}.npz",
                         seed=TRUTH_SEED_OFFSET + seed, dtype=torch.float32, device=settings.device, runner=runner,
                         progress=True)


@dataclass(frozen=True)
class BenchSettings:
    """What ``mechest bench`` sweeps and how much it may spend."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    depth: int = 4
    depths: tuple[int, ...] = (1, 2, 3, 4)
    depth_width: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    activation: str = "relu"
    truth_samples: int = 10**8
    max_truth_flops: float = 1e12
    min_truth_samples: int = 10**7
    max_flops: float = 2e11
    mc_samples: tuple[int, ...] = (10, 100, 1000, 10_000, 100_000)
    repeats: int = 2
    orders: tuple[int, ...] = tuple(range(1, MAX_ORDER + 1))
    variants: tuple[str, ...] = BENCH_VARIANTS
    dtype: str = "float64"
    device: str = "cpu"
    results: Path = Path("results")
    truth_dirs: tuple[Path, ...] = ()
    plots: bool = True

    @property
    def headline(self) -> tuple[int, int]:
        """(width, depth) of the MSE-vs-FLOPs and MSE-vs-time figures: the widest net at the main depth."""
        return max(self.widths), self.depth

    def networks(self) -> list[tuple[int, int]]:
        """(width, depth) pairs: every width at the main depth, then every depth at ``depth_width``."""
        pairs = [(width, self.depth) for width in self.widths]
        return pairs + [(self.depth_width, d) for d in self.depths if (self.depth_width, d) not in pairs]

    def check(self) -> BenchSettings:
        """Raise a one-line MechestError for out-of-range settings; return self."""
        positive = {"width": self.widths, "depth": (self.depth, *self.depths), "depth width": (self.depth_width,),
                    "Monte Carlo sample count": self.mc_samples, "repeat count": (self.repeats,)}
        for what, values in positive.items():
            if not values or min(values) < 1:
                raise MechestError(f"every {what} must be a positive whole number, got {list(values)}")
        if not self.seeds or min(self.seeds) < 0:
            raise MechestError(f"seeds must be non-negative, got {list(self.seeds)}")
        if min(self.truth_samples, self.min_truth_samples) < MIN_TRUTH_SAMPLES:
            raise MechestError(f"truth sample counts must be at least {MIN_TRUTH_SAMPLES}")
        if self.max_truth_flops <= 0 or self.max_flops <= 0:
            raise MechestError("the FLOP caps must be positive")
        for directory in self.truth_dirs:
            if not Path(directory).is_dir():
                raise MechestError(f"truth directory {directory} does not exist")
        return self


QUICK = BenchSettings(widths=(16, 32, 64), depths=(1, 2, 3, 4), depth_width=16, seeds=(0, 1), orders=(1, 2, 3),
                      truth_samples=10**6, max_truth_flops=5e10, min_truth_samples=10**5, max_flops=1.2e9,
                      mc_samples=(10, 100, 1000, 10_000), repeats=1)


def fastest(run: Callable[[], Estimate], repeats: int) -> Estimate:
    """The run with the least wall-clock time of ``repeats`` (the machine is shared: the minimum is the least
    noisy), as an Estimate."""
    return min((run() for _ in range(repeats)), key=lambda result: result.seconds)


def row_of(net: MLP, width: int, seed: int, truth: Truth, result: Estimate, flops: FlopCount, dtype: str) -> dict:
    """One row of the runs table (mechest.results.SCHEMA)."""
    measured = score(result.mean, truth)
    scheme = result.scheme
    return {
        "width": width, "depth": net.depth, "activation": net.activations[0], "net_seed": seed,
        "weights_hash": net.fingerprint(), "method": result.method,
        "order": scheme.order if scheme else None, "variant": scheme.variant if scheme else None,
        "factored": scheme.factored if scheme else None,
        "samples": result.samples, "dtype": dtype, "flops_raw": float(flops.raw),
        "flops_discounted": float(flops.discounted), "forward_flops": float(net.flops_per_sample()),
        "seconds": result.seconds, "mse": measured.mse, "variance": measured.variance,
        "noise_floor": measured.noise_floor, "mse_over_var": measured.relative, "truth_samples": truth.samples,
    }


@dataclass
class Plan:
    """The configurations a bench run will run per network, and those it skips (with the reason)."""

    runnable: dict[tuple[int, int], list[Scheme]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def plan_configs(settings: BenchSettings) -> Plan:
    """Which schemes run on which (width, depth): every supported one (mechest.kprop.SCHEMES) under the FLOP
    cap."""
    plan = Plan()
    configs = all_configs(settings.orders, settings.variants)
    for width, depth in settings.networks():
        plan.runnable[width, depth] = []
        for config in configs:
            predicted = predicted_flops(random_mlp(width, depth, settings.activation, seed=0), config)
            if predicted > settings.max_flops:
                plan.skipped.append(f"{config} at width {width}, depth {depth}: predicted {predicted:.2g} "
                                    f"FLOPs > cap {settings.max_flops:.2g} (--max-flops)")
            else:
                plan.runnable[width, depth].append(config)
    return plan


def bench_network(net: MLP, width: int, seed: int, truth: Truth, configs: Sequence[Scheme],
                  settings: BenchSettings, bar: tqdm | LogProgress) -> list[dict]:
    """Rows for one network: each kprop configuration and Monte Carlo at each sample count, scored."""
    rows = []
    for config in configs:
        bar.set_postfix_str(f"n={width} L={net.depth} seed={seed} {config}")
        result = fastest(lambda: estimate(net, "kprop", scheme=config, dtype=settings.dtype, device=settings.device,
                                          count=False), settings.repeats)
        rows.append(row_of(net, width, seed, truth, result, bench_flops(net, config), settings.dtype))
        bar.update()
    for samples in settings.mc_samples:
        bar.set_postfix_str(f"n={width} L={net.depth} seed={seed} Monte Carlo N={samples}")
        result = fastest(lambda: estimate(net, "mc", samples=samples, seed=MC_SEED_OFFSET + seed, dtype="float32",
                                          device=settings.device), settings.repeats)
        flops = samples * net.flops_per_sample()
        rows.append(row_of(net, width, seed, truth, result, FlopCount(flops, flops), "float32"))
        bar.update()
    return rows


def run_bench(settings: BenchSettings, log: Callable[[str], None] = print,
              runner: ChunkRunner = run_chunks_locally) -> tuple[str, list[dict], Plan]:
    """Run the sweep; write every network's rows to the results store as soon as they are done (new truths'
    Monte Carlo chunks on ``runner``).

    Returns the run id, all rows of this run, and the plan (with the skipped configurations).
    """
    settings.check()
    make_directory(Path(settings.results))
    plan = plan_configs(settings)
    for line in plan.skipped:
        log(f"skipped: {line}")
    run_id, machine = new_run_id(), machine_description()
    jobs = [(width, depth, seed) for width, depth in settings.networks() for seed in settings.seeds]
    total = sum(len(plan.runnable[width, depth]) + len(settings.mc_samples) for width, depth, _ in jobs)
    rows: list[dict] = []
    with progress_bar(total, unit="run", desc="bench") as bar:
        for part, (width, depth, seed) in enumerate(jobs):
            net = random_mlp(width, depth, settings.activation, seed=seed)
            truth = ground_truth(net, seed, settings, runner)
            if truth is None:
                log(f"skipped: width {width}, depth {depth}, seed {seed}: no cached truth and a new one under "
                    f"--max-truth-flops would have fewer than {settings.min_truth_samples:.3g} samples")
                bar.update(len(plan.runnable[width, depth]) + len(settings.mc_samples))
                continue
            network_rows = bench_network(net, width, seed, truth, plan.runnable[width, depth], settings, bar)
            stamped = [{"run_id": run_id, "time": utc_now(), "machine": machine, **row} for row in network_rows]
            write_part(settings.results, run_id, part, stamped)
            rows.extend(stamped)
    return run_id, rows, plan


# ---- analysis of a run's rows ------------------------------------------------------------------------------


def config_of(row: dict) -> Scheme | None:
    return Scheme(row["order"], row["variant"], bool(row["factored"])) if row["method"] == "kprop" else None


def seed_means(rows: Sequence[dict], width: int, depth: int) -> dict[Scheme, dict[str, float]]:
    """Per kprop configuration at (width, depth): mean over seeds of MSE/Var, MSE − floor, FLOPs, seconds."""
    grouped: dict[Scheme, list[dict]] = {}
    for row in rows:
        if row["method"] == "kprop" and (row["width"], row["depth"]) == (width, depth):
            grouped.setdefault(config_of(row), []).append(row)
    return {config: {"mse_over_var": float(np.mean([r["mse_over_var"] for r in group])),
                     "mse": float(np.mean([r["mse"] - r["noise_floor"] for r in group])),
                     "flops_raw": float(np.mean([r["flops_raw"] for r in group])),
                     "flops_discounted": float(np.mean([r["flops_discounted"] for r in group])),
                     "seconds": float(np.mean([r["seconds"] for r in group])), "seeds": len(group)}
            for config, group in grouped.items()}


def fitted_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x over the points with y > 0 (NaN with fewer than two)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y > 0]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


@dataclass(frozen=True)
class TimeFit:
    """Monte Carlo wall-clock as seconds = overhead + per_sample · N, fitted by least squares."""

    overhead: float
    per_sample: float

    def seconds(self, samples: float) -> float:
        return self.overhead + self.per_sample * samples


def fit_mc_time(rows: Sequence[dict], width: int, depth: int) -> TimeFit | None:
    """Fit Monte Carlo time against N at (width, depth); overhead clipped at 0. None without two sizes."""
    points = [(r["samples"], r["seconds"]) for r in rows
              if r["method"] == "mc" and (r["width"], r["depth"]) == (width, depth)]
    if len({n for n, _ in points}) < 2:
        return None
    n, seconds = np.array(points, dtype=float).T
    slope, intercept = np.polyfit(n, seconds, 1)
    return TimeFit(max(float(intercept), 0.0), float(slope))


def pareto_front(points: dict[Scheme, dict[str, float]], key: str = "flops_raw") -> list[Scheme]:
    """Schemeurations not beaten by a cheaper one: sorted by cost, each with a lower MSE/Var than all cheaper."""
    front, best = [], math.inf
    for config, point in sorted(points.items(), key=lambda item: item[1][key]):
        if point["mse_over_var"] < best:
            front.append(config)
            best = point["mse_over_var"]
    return front


def front_below_mc_line(points: dict[Scheme, dict[str, float]], forward: float) -> list[str]:
    """Where the Pareto front is not below the Monte Carlo line MSE/Var = forward / F, for budgets F from the
    cheapest front point to the best one (empty if it is below everywhere). Between front points the front
    is flat while the line falls, so the worst budget is just before the next front point."""
    front = pareto_front(points)
    failures = []
    for i, config in enumerate(front):
        next_cost = points[front[i + 1]]["flops_raw"] if i + 1 < len(front) else points[config]["flops_raw"]
        line = forward / next_cost
        if not points[config]["mse_over_var"] < line:
            failures.append(f"{config} (MSE/Var {points[config]['mse_over_var']:.3g}) is above the Monte "
                            f"Carlo line ({line:.3g}) at budget {next_cost:.3g} FLOPs")
    return failures


def headline_summary(rows: Sequence[dict], width: int, depth: int) -> list[str]:
    """The acceptance numbers at (width, depth): FLOP ratio at equal MSE, Pareto front vs the Monte Carlo
    line, wall-clock ratio of the best configuration, factored K = 3 time."""
    points = seed_means(rows, width, depth)
    forwards = [r["forward_flops"] for r in rows if (r["width"], r["depth"]) == (width, depth)]
    if not points or not forwards:
        return [f"no kprop runs at width {width}, depth {depth}"]
    forward = forwards[0]
    seeds = max(point["seeds"] for point in points.values())
    truth_samples = min(r["truth_samples"] for r in rows if (r["width"], r["depth"]) == (width, depth))
    lines = [f"width {width}, {depth} hidden layers: {seeds} seeds, truths of ≥ {truth_samples:.3g} samples "
             f"(noise floor subtracted); one forward pass = {forward:.6g} FLOPs; FLOPs are raw counts"]
    ratios = {config: forward / (point["mse_over_var"] * point["flops_raw"])
              for config, point in points.items() if point["mse_over_var"] > 0}
    if ratios:
        best_ratio = max(ratios, key=ratios.get)
        lines.append(f"largest FLOP advantage at equal MSE (Monte Carlo FLOPs / kprop FLOPs): "
                     f"{ratios[best_ratio]:.3g}x ({best_ratio}: MSE/Var "
                     f"{points[best_ratio]['mse_over_var']:.3g} with {points[best_ratio]['flops_raw']:.3g} FLOPs; "
                     f"Monte Carlo needs {forward / points[best_ratio]['mse_over_var']:.3g})")
    front = pareto_front(points)
    failures = front_below_mc_line(points, forward)
    cheapest = points[front[0]]["flops_raw"]
    coverage = ("its cheapest point costs at most one forward pass, so it covers every budget from one forward pass on"
                if cheapest <= forward else
                f"below {cheapest:.3g} FLOPs ({cheapest / forward:.3g} forward passes) kprop has no configuration")
    lines.append(f"Pareto front ({', '.join(str(c) for c in front)}) "
                 + ("lies below the Monte Carlo line from " if not failures else "is NOT below the Monte Carlo line: "
                    + "; ".join(failures) + "; checked from ")
                 + f"{cheapest:.3g} to {points[front[-1]]['flops_raw']:.3g} FLOPs; {coverage}")
    fit = fit_mc_time(rows, width, depth)
    if fit is not None:
        lines.append(f"Monte Carlo wall-clock fit: {fit.overhead:.3g} s + {fit.per_sample:.3g} s per sample")
        for config in reversed(front):
            point = points[config]
            if point["mse_over_var"] > 0:
                mc_seconds = fit.seconds(1 / point["mse_over_var"])
                lines.append(f"wall-clock, {config}: {point['seconds']:.3g} s for MSE/Var "
                             f"{point['mse_over_var']:.3g}; Monte Carlo needs {1 / point['mse_over_var']:.3g} samples "
                             f"= {mc_seconds:.3g} s: Monte Carlo time / kprop time = "
                             f"{mc_seconds / point['seconds']:.3g}")
    for config, point in points.items():
        if config.order == 3 and config.factored:
            lines.append(f"{config}: {point['seconds']:.3g} s, {point['flops_raw']:.3g} FLOPs")
    return lines


def summary_table(rows: Sequence[dict], settings: BenchSettings) -> tuple[list[str], list[list]]:
    """Header and rows: mean over seeds per (width, depth, configuration), then Monte Carlo per N."""
    header = ["width", "depth", "method", "FLOPs raw", "FLOPs discounted", "seconds", "MSE/Var", "seeds"]
    table = []
    for width, depth in settings.networks():
        for config, point in seed_means(rows, width, depth).items():
            table.append([width, depth, config, point["flops_raw"], point["flops_discounted"],
                          point["seconds"], point["mse_over_var"], point["seeds"]])
        for samples in settings.mc_samples:
            runs = [r for r in rows if r["method"] == "mc" and r["samples"] == samples
                    and (r["width"], r["depth"]) == (width, depth)]
            if runs:
                table.append([width, depth, f"Monte Carlo N={samples}", runs[0]["flops_raw"], runs[0]["flops_raw"],
                              float(np.mean([r["seconds"] for r in runs])),
                              float(np.mean([r["mse_over_var"] for r in runs])), len(runs)])
    return header, table


def width_slopes(rows: Sequence[dict], settings: BenchSettings) -> list[str]:
    """Fitted slope of log(MSE − floor) against log width per configuration, at the main depth."""
    by_config: dict[Scheme, tuple[list[int], list[float]]] = {}
    for width in settings.widths:
        for config, point in seed_means(rows, width, settings.depth).items():
            widths, values = by_config.setdefault(config, ([], []))
            widths.append(width)
            values.append(point["mse"])
    return [f"{config}: slope {fitted_slope(w, v):.2f} over widths {w[0]}..{w[-1]}"
            for config, (w, v) in by_config.items() if len(w) >= 2]


def with_overrides(base: BenchSettings, **overrides: object) -> BenchSettings:
    """``base`` with every override that is not None."""
    return replace(base, **{key: value for key, value in overrides.items() if value is not None})
