"""The tail-probability experiment (`mechest tail-bench`): per-neuron P(z_i beyond t) of He-init ReLU nets,
every kprop tail estimator against exact exceedance counts, at equal FLOPs with Monte Carlo.

Networks: ``random_mlp(width, depth, "relu", seed=s)``; the layers are pre-activations counted from 1 (layer
2 = after one ReLU layer, layer depth + 1 = the output). Ground truth per network: a file
``tail_truth_seed{s}.npz`` holding int64 counts[layer, event, neuron] over ``samples`` Gaussian inputs, the
layers, thresholds and tails (upper = 1) of the events, and the network's fingerprint (checked); the files of
networks other than the published ones carry ``_w{width}_d{depth}`` in their names. The truths of the published
run (width 256, depth 3, 4.87·10⁹ samples) are in benchmarks/data/; ``make_truth`` computes new ones on this
machine.

Estimators: LPE (Heaviside unit + kprop, one propagation per event) and the Edgeworth, Gram–Charlier and
saddlepoint tails of the propagated marginal cumulants (one propagation per layer and configuration serves
every event; its FLOPs are charged to each event). Monte Carlo at equal FLOPs has N_eq = FLOPs / (one forward
pass to the layer + one comparison per neuron) samples: it sees probabilities down to about 1/N_eq with
relative error about 1/sqrt(N_eq p). Every summary restricts to the neurons whose true probability is in a
band (default [1e-6, 1e-4]); "100x" columns further to those with p ≤ 1/(100 N_eq), for which the method spends
no more than Monte Carlo whose 1/N is 100x their probability. The budget ladder estimates each band neuron with
the most expensive of LADDER whose N_eq that rule allows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechest.errors import MechestError
from mechest.estimators.tail import (
    Event,
    exceedance_table,
    hermite_tail,
    lpe,
    marginal_cumulants,
    saddlepoint_tail,
    truncate,
)
from mechest.files import atomic_path, write_npz_atomically, write_text_atomically
from mechest.flops import FlopCounter
from mechest.kprop import Scheme
from mechest.mlp import MLP, random_mlp, read_npz

UPPER_THRESHOLDS = (2.0, 3.0, 3.5, 4.0, 4.5, 5.0)
LOWER_THRESHOLDS = (-2.0, -3.0, -4.0)
LPE_CONFIGS = ((1, "simple", False), (2, "simple", False), (2, "augment", False), (3, "simple", True))
MARGINAL_CONFIGS = ((2, "augment", False), (3, "simple", False), (3, "simple", True))
LADDER = ("saddlepoint K=2 augment", "saddlepoint K=3 simple factored")  # cheapest first
PLOTTED = ("lpe K=2 simple", "lpe K=3 simple factored", "edgeworth K=3 simple", "saddlepoint K=2 augment",
           "saddlepoint K=3 simple factored")
BAND = (1e-6, 1e-4)
PLOT_BAND = (1e-8, 1.0)


PUBLISHED = (256, 3)  # width and depth of the published run, whose truths are committed


@dataclass(frozen=True)
class TailBenchSettings:
    width: int = PUBLISHED[0]
    depth: int = PUBLISHED[1]
    layers: tuple[int, ...] = (2, 4)
    seeds: tuple[int, ...] = (0, 1)
    truths: Path = Path("benchmarks/data")
    results: Path = Path("results")
    marginal_configs: tuple = MARGINAL_CONFIGS
    lpe_configs: tuple = LPE_CONFIGS
    band: tuple[float, float] = BAND

    def network(self, seed: int) -> MLP:
        return random_mlp(self.width, self.depth, "relu", seed=seed)

    @property
    def tag(self) -> str:
        """Part of every file name: "" for the published networks, "_w{width}_d{depth}" for others, so that their
        truths, records and figures never collide with (or pick up) the published run's."""
        return "" if (self.width, self.depth) == PUBLISHED else f"_w{self.width}_d{self.depth}"

    def truth_path(self, seed: int) -> Path:
        return self.truths / f"tail_truth{self.tag}_seed{seed}.npz"


def default_events() -> list[Event]:
    return [(t, True) for t in UPPER_THRESHOLDS] + [(t, False) for t in LOWER_THRESHOLDS]


def make_truth(settings: TailBenchSettings, seed: int, samples: int) -> Path:
    """Count every event of ``default_events`` at every layer on this machine and write the truth file."""
    net = settings.network(seed)
    events = default_events()
    counts = exceedance_table(net, settings.layers, events, samples, seed=1000003 * seed).numpy()
    path = settings.truth_path(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz_atomically(path, {
        "counts": counts, "samples": np.array(samples), "layers": np.array(settings.layers),
        "thresholds": np.array([t for t, _ in events]), "upper": np.array([int(u) for _, u in events]),
        "fingerprint": np.array(net.fingerprint()), "seed": np.array(seed),
    })
    return path


def load_truth(settings: TailBenchSettings, seed: int, net: MLP) -> dict:
    """The truth counts of ``net`` (refuses a missing file or one made for another network)."""
    path = settings.truth_path(seed)
    if not path.is_file():
        raise MechestError(f"no tail truth {path}; compute one with --make-truths SAMPLES")
    data = read_npz(path)
    if str(data["fingerprint"]) != net.fingerprint():
        raise MechestError(f"{path} belongs to a different network than random_mlp({settings.width}, "
                           f"{settings.depth}, 'relu', seed={seed})")
    return {key: data[key] for key in ("counts", "samples", "layers", "thresholds", "upper")}


def mc_flops_per_sample(net: MLP, layer: int) -> int:
    """One forward pass up to ``layer`` plus one comparison per neuron."""
    prefix = truncate(net, layer)
    return prefix.flops_per_sample() + prefix.output_dim


def marginal_rows(net: MLP, layer: int, config: tuple, events: Sequence[Event]) -> list[dict]:
    """Edgeworth, Gram–Charlier (= the LPE value) and saddlepoint tails of every event from one propagation."""
    scheme = Scheme(*config)
    start = time.perf_counter()
    with FlopCounter() as counter:
        cumulants = marginal_cumulants(net, layer, scheme)
        saddlepoint_tail(cumulants, 0.0)
    seconds = time.perf_counter() - start
    rows = []
    for threshold, upper in events:
        saddlepoint, valid = saddlepoint_tail(cumulants, threshold, upper)
        for name, raw in (("edgeworth", hermite_tail(cumulants, threshold, upper)),
                          ("gram-charlier", hermite_tail(cumulants, threshold, upper, skew_squared=False)),
                          ("saddlepoint", saddlepoint)):
            rows.append(dict(method=name, **scheme.to_dict(), threshold=threshold,
                             upper=upper, raw=raw.tolist(), flops=counter.total, seconds=seconds,
                             fallbacks=int((~valid).sum()) if name == "saddlepoint" else 0))
    return rows


def lpe_rows(net: MLP, layer: int, config: tuple, events: Sequence[Event]) -> list[dict]:
    order, variant, factored = config
    rows = []
    for threshold, upper in events:
        result = lpe(net, layer, threshold, upper, order=order, variant=variant, factored=factored)
        rows.append(dict(method="lpe", order=order, variant=variant, factored=factored, threshold=threshold,
                         upper=upper, raw=result.raw.tolist(), flops=result.flops, seconds=result.seconds,
                         fallbacks=0))
    return rows


def run_seed(settings: TailBenchSettings, seed: int, log: Callable[[str], None] = print) -> list[dict]:
    """Every estimator on every (layer, event) of network ``seed``, each row with its truth counts."""
    net = settings.network(seed)
    truth = load_truth(settings, seed, net)
    records = []
    for layer in settings.layers:
        if layer not in list(truth["layers"]):
            raise MechestError(f"the truth of seed {seed} has no layer {layer}")
        j = list(truth["layers"]).index(layer)
        events = [(float(t), bool(u)) for t, u in zip(truth["thresholds"], truth["upper"])]
        rows = [row for config in settings.lpe_configs for row in lpe_rows(net, layer, config, events)]
        rows += [row for config in settings.marginal_configs for row in marginal_rows(net, layer, config, events)]
        for row in rows:
            i = events.index((row["threshold"], row["upper"]))
            row.update(seed=seed, layer=layer, truth_counts=truth["counts"][j, i].tolist(),
                       truth_samples=int(truth["samples"]), mc_flops_per_sample=mc_flops_per_sample(net, layer))
        records += rows
        log(f"seed {seed} layer {layer}: {len(rows)} rows")
    return records


def label(row: dict) -> str:
    factored = " factored" if row["factored"] else ""
    return f"{row['method']} K={row['order']} {row['variant']}{factored}"


def errors_of(row: dict, band: tuple[float, float]) -> dict:
    """Relative errors |estimate/truth − 1| of the clipped estimate over the neurons with truth in ``band``."""
    samples = row["truth_samples"]
    true = np.asarray(row["truth_counts"]) / samples
    raw = np.asarray(row["raw"])
    keep = (true >= band[0]) & (true <= band[1])
    n_eq = row["flops"] / row["mc_flops_per_sample"]
    return dict(rel=np.abs(np.clip(raw, 0.0, 1.0)[keep] / true[keep] - 1), true=true[keep], n_eq=n_eq,
                flops=row["flops"], truth_rse=np.sqrt((1 - true[keep]) / (samples * true[keep])),
                clipped=int(((raw < 0) | (raw > 1))[keep].sum()), fallbacks=row.get("fallbacks", 0),
                rarer_than_mc=(1 / n_eq) / true[keep])


def summarise(records: Sequence[dict], band: tuple[float, float]) -> list[dict]:
    """Per (layer, method): median relative error over every (seed, event, neuron) with truth in ``band``."""
    groups: dict[tuple, list[dict]] = {}
    for row in records:
        groups.setdefault((row["layer"], label(row)), []).append(errors_of(row, band))
    summary = []
    for (layer, name), parts in sorted(groups.items()):
        rel = np.concatenate([part["rel"] for part in parts])
        if not rel.size:
            continue
        at_100x = rel[np.concatenate([part["rarer_than_mc"] for part in parts]) >= 100]
        summary.append(dict(
            layer=layer, method=name, neurons=int(rel.size), median_rel_error=float(np.median(rel)),
            flops=int(parts[0]["flops"]), n_eq=float(parts[0]["n_eq"]), neurons_100x=int(at_100x.size),
            median_rel_error_100x=float(np.median(at_100x)) if at_100x.size else None,
            median_truth_rse=float(np.median(np.concatenate([part["truth_rse"] for part in parts]))),
            clipped=sum(part["clipped"] for part in parts),
            saddlepoint_fallbacks=sum(part["fallbacks"] for part in parts),
        ))
    return summary


def budget_ladder(records: Sequence[dict], layer: int, band: tuple[float, float]) -> dict:
    """Each band neuron estimated by the most expensive method of LADDER whose N_eq ≤ 1/(100 p); neurons that
    no method of the ladder is allowed are counted as uncovered."""
    by_event: dict[tuple, dict[str, dict]] = {}
    for row in records:
        if row["layer"] == layer and label(row) in LADDER:
            by_event.setdefault((row["seed"], row["threshold"], row["upper"]), {})[label(row)] = errors_of(row, band)
    covered, uncovered = [], 0
    for parts in by_event.values():
        if set(parts) != set(LADDER):
            continue
        chosen = np.full(parts[LADDER[0]]["rel"].shape, np.nan)
        for name in LADDER:
            chosen = np.where(parts[name]["rarer_than_mc"] >= 100, parts[name]["rel"], chosen)
        covered.append(chosen[~np.isnan(chosen)])
        uncovered += int(np.isnan(chosen).sum())
    errors = np.concatenate(covered) if covered else np.array([])
    return dict(layer=layer, covered=int(errors.size), uncovered=uncovered,
                median_rel_error=float(np.median(errors)) if errors.size else None)


def markdown_table(summary: Sequence[dict]) -> str:
    """One row per (layer, method), as in docs/results.md."""
    lines = ["| layer | method | FLOPs | N_eq | neurons in band | median rel. error | neurons with p ≤ 1/(100 N_eq) "
             "| their median rel. error | clipped | saddlepoint fallbacks |", "|---" * 10 + "|"]
    for row in summary:
        at_100x = "–" if row["median_rel_error_100x"] is None else f"{row['median_rel_error_100x']:.1%}"
        lines.append(f"| {row['layer']} | {row['method']} | {row['flops']:.2e} | {row['n_eq']:.3g} | {row['neurons']} "
                     f"| {row['median_rel_error']:.1%} | {row['neurons_100x']} | {at_100x} | {row['clipped']} "
                     f"| {row['saddlepoint_fallbacks']} |")
    return "\n".join(lines)


def plot(records: Sequence[dict], settings: TailBenchSettings, out: Path) -> list[Path]:
    """Relative error against the true probability per neuron, one panel per layer; Monte Carlo at equal FLOPs
    dashed (1/sqrt(N_eq p)) and its resolution p = 1/N_eq dotted. Writes out.png and out.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [name for name in PLOTTED if any(label(row) == name for row in records)]
    fig, axes = plt.subplots(1, len(settings.layers), figsize=(6 * len(settings.layers), 4.5), sharey=True,
                             squeeze=False)
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for axis, layer in zip(axes[0], settings.layers):
        for name in methods:
            parts = [errors_of(row, PLOT_BAND) for row in records if row["layer"] == layer and label(row) == name]
            if not parts:
                continue
            n_eq = parts[0]["n_eq"]
            axis.scatter(np.concatenate([p["true"] for p in parts]),
                         np.maximum(np.concatenate([p["rel"] for p in parts]), 1e-5), s=4, alpha=0.5,
                         color=colours[name], rasterized=True, label=f"{name} ({n_eq:.3g} MC-equal samples)")
            grid = np.logspace(-8, 0, 50)
            axis.plot(grid, 1 / np.sqrt(n_eq * grid), "--", color=colours[name], linewidth=1)
            axis.axvline(1 / n_eq, color=colours[name], linestyle=":", linewidth=1)
        axis.axvspan(*settings.band, color="grey", alpha=0.1)
        axis.axhline(0.3, color="black", linewidth=0.8)
        axis.set(xscale="log", yscale="log", xlim=PLOT_BAND, ylim=(1e-5, 10), xlabel="true P(z_i beyond t)",
                 title=f"layer {layer}: after {layer - 1} ReLU layer{'s' if layer > 2 else ''}, width "
                       f"{settings.width}")
    axes[0][0].set_ylabel("|estimate / truth - 1|")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Tail probabilities: kprop (dots) vs Monte Carlo at equal FLOPs (dashed: 1/sqrt(N p); "
                 "dotted: p = 1/N)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(suffix) for suffix in (".png", ".pdf")]
    try:
        for path in paths:
            with atomic_path(path) as temporary:
                fig.savefig(temporary, dpi=110, format=path.suffix[1:])
    finally:
        plt.close(fig)
    return paths


def records_path(settings: TailBenchSettings, seed: int) -> Path:
    return settings.results / "tail" / f"tail_bench{settings.tag}_seed{seed}.json"


def read_records(path: Path) -> list[dict]:
    """The saved rows of one seed (one-line error for an unreadable file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MechestError(f"cannot read {path}: {error}") from None


def run_tail_bench(settings: TailBenchSettings, rerun: bool = True,
                   log: Callable[[str], None] = print) -> tuple[list[dict], list[dict], list[dict]]:
    """Run (or, with ``rerun=False``, reread) every seed; returns the records, the summary and the ladders."""
    records = []
    for seed in settings.seeds:
        path = records_path(settings, seed)
        if not rerun and not path.is_file():
            raise MechestError(f"no saved records {path}: run without --replot first")
        if rerun:
            rows = run_seed(settings, seed, log)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, json.dumps(rows))
        records += read_records(path)
    summary = summarise(records, settings.band)
    ladders = [budget_ladder(records, layer, settings.band) for layer in settings.layers]
    return records, summary, ladders
