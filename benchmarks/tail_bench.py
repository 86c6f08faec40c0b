"""Tail-probability benchmark (issue 5): per-neuron P(z_i > t) after 1 and 3 ReLU layers at width 256.

Networks: ``random_mlp(256, 3, "relu", seed=s)``; layer 2 is the pre-activation after one ReLU layer and layer 4
(the output) the one after three. Ground truth: exact exceedance counts over 4.87·10⁹ Gaussian inputs per
network, computed on a GPU by benchmarks/tail_truth_gpu.py (float32 forward pass, int64 counts) and stored in
benchmarks/data/tail_truth_seed{s}.npz with the network's fingerprint (checked here). The truth's relative
standard error per neuron is sqrt((1 - p) / (N p)).

Estimators: LPE (Heaviside unit + kprop) at the orders that run in seconds at width 256, and the Edgeworth,
Gram–Charlier and saddlepoint tails of the propagated marginal cumulants (K = 2 augment, K = 3 simple
unfactorised and factored; computed once per layer and configuration, reused for every threshold; the FLOPs of
one computation are charged to each threshold). The "budget ladder" estimates each band neuron with the most
expensive saddlepoint configuration whose N_eq is at most 1/(100 p).
"Monte Carlo at equal FLOPs" means N_eq = FLOPs / (one forward pass to the layer + one comparison per neuron)
samples; it sees probabilities down to about 1/N_eq, with relative error about 1/sqrt(N_eq p).

    python benchmarks/tail_bench.py            # writes benchmarks/results/tail_bench_seed{s}.json and docs/figures/tail_bench.{png,pdf}
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mechest.flops import FlopCounter, warm_up  # noqa: E402
from mechest.mlp import MLP, random_mlp  # noqa: E402
from mechest.tail import hermite_tail, lpe, marginal_cumulants, saddlepoint_tail, truncate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRUTH_DIR = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"
FIGURE = ROOT / "docs" / "figures" / "tail_bench"
WIDTH, DEPTH = 256, 3
LAYERS = (2, 4)
LPE_CONFIGS = ((1, "simple", False), (2, "simple", False), (2, "augment", False), (3, "simple", True))
MARGINAL_CONFIGS = ((2, "augment", False), (3, "simple", False), (3, "simple", True))
BUDGET_LADDER = ("saddlepoint K=2 augment", "saddlepoint K=3 simple factored")  # cheapest first
PLOT_BAND = (1e-8, 1.0)  # truths below 1e-8 rest on fewer than 49 events (relative standard error above 14%)


def load_truth(seed: int, net: MLP) -> dict:
    """The GPU truth counts of ``net`` (refuses a file made for another network)."""
    data = np.load(TRUTH_DIR / f"tail_truth_seed{seed}.npz")
    if str(data["fingerprint"]) != net.fingerprint():
        raise SystemExit(f"truth file for seed {seed} belongs to a different network")
    return {key: data[key] for key in ("counts", "samples", "layers", "thresholds", "upper")}


def mc_flops_per_sample(net: MLP, layer: int) -> int:
    prefix = truncate(net, layer)
    return prefix.flops_per_sample() + prefix.output_dim


def edgeworth_rows(net: MLP, layer: int, order: int, variant: str, factored: bool,
                   events: list[tuple[float, bool]]) -> list[dict]:
    """Edgeworth, saddlepoint and Gram–Charlier (= the LPE value) tails of every event from one set of marginals.

    The marginals are computed once, inside the FLOP counter (its overhead is microseconds per operation).
    """
    warm_up()
    start = time.perf_counter()
    with FlopCounter() as counter:
        cumulants = marginal_cumulants(net, layer, order, variant, factored)
        saddlepoint_tail(cumulants, 0.0)
    seconds = time.perf_counter() - start
    rows = []
    for threshold, upper in events:
        saddlepoint, valid = saddlepoint_tail(cumulants, threshold, upper)
        for name, raw in (("edgeworth", hermite_tail(cumulants, threshold, upper)),
                          ("gram-charlier", hermite_tail(cumulants, threshold, upper, skew_squared=False)),
                          ("saddlepoint", saddlepoint)):
            rows.append(dict(method=name, order=order, variant=variant, factored=factored, threshold=threshold,
                             upper=upper, raw=raw.tolist(), flops=counter.total, seconds=seconds,
                             fallbacks=int((~valid).sum()) if name == "saddlepoint" else 0))
    return rows


def lpe_rows(net: MLP, layer: int, order: int, variant: str, factored: bool,
             events: list[tuple[float, bool]]) -> list[dict]:
    rows = []
    for threshold, upper in events:
        result = lpe(net, layer, threshold, upper, order=order, variant=variant, factored=factored)
        rows.append(dict(method="lpe", order=order, variant=variant, factored=factored, threshold=threshold,
                         upper=upper, raw=result.raw.tolist(), flops=result.flops, seconds=result.seconds))
    return rows


def run(seeds: list[int]) -> list[dict]:
    records = []
    for seed in seeds:
        net = random_mlp(WIDTH, DEPTH, "relu", seed=seed)
        truth = load_truth(seed, net)
        for layer in LAYERS:
            j = list(truth["layers"]).index(layer)
            events = [(float(t), bool(u)) for t, u in zip(truth["thresholds"], truth["upper"])]
            rows = [row for config in LPE_CONFIGS for row in lpe_rows(net, layer, *config, events)]
            rows += [row for config in MARGINAL_CONFIGS
                     for row in edgeworth_rows(net, layer, *config, events)]
            for row in rows:
                i = events.index((row["threshold"], row["upper"]))
                row.update(seed=seed, layer=layer, truth_counts=truth["counts"][j, i].tolist(),
                           truth_samples=int(truth["samples"]), mc_flops_per_sample=mc_flops_per_sample(net, layer))
            records += rows
            print(f"seed {seed} layer {layer}: {len(rows)} rows", flush=True)
    return records


def label(row: dict) -> str:
    factored = " factored" if row["factored"] else ""
    return f"{row['method']} K={row['order']} {row['variant']}{factored}"


def errors_of(row: dict, band: tuple[float, float]) -> dict:
    """Relative errors of the clipped estimate over neurons whose true probability is in ``band``."""
    samples = row["truth_samples"]
    true = np.asarray(row["truth_counts"]) / samples
    raw = np.asarray(row["raw"])
    estimate = np.clip(raw, 0.0, 1.0)
    keep = (true >= band[0]) & (true <= band[1])
    n_eq = row["flops"] / row["mc_flops_per_sample"]
    rel = np.abs(estimate[keep] / true[keep] - 1)
    truth_rse = np.sqrt((1 - true[keep]) / (samples * true[keep]))
    return dict(fallbacks=row.get("fallbacks", 0), neurons=int(keep.sum()), rel=rel, truth_rse=truth_rse, true=true[keep], n_eq=n_eq, flops=row["flops"],
                clipped=int(((raw < 0) | (raw > 1))[keep].sum()), negative=int((raw < 0)[keep].sum()),
                rarer_than_mc=(1 / n_eq) / true[keep])


def summarise(records: list[dict], band: tuple[float, float]) -> list[dict]:
    """Per (layer, method): median relative error over all (seed, event, neuron) with truth in ``band``."""
    groups: dict[tuple, list[dict]] = {}
    for row in records:
        groups.setdefault((row["layer"], label(row)), []).append(errors_of(row, band))
    summary = []
    for (layer, name), parts in sorted(groups.items()):
        rel = np.concatenate([part["rel"] for part in parts])
        if not rel.size:
            continue
        ratio = np.concatenate([part["rarer_than_mc"] for part in parts])
        at_100x = rel[ratio >= 100]
        summary.append(dict(
            layer=layer, method=name, neurons=int(rel.size), median_rel_error=float(np.median(rel)),
            flops=int(parts[0]["flops"]), n_eq=float(parts[0]["n_eq"]),
            neurons_100x=int(at_100x.size),
            median_rel_error_100x=float(np.median(at_100x)) if at_100x.size else None,
            median_truth_rse=float(np.median(np.concatenate([part["truth_rse"] for part in parts]))),
            clipped=int(sum(part["clipped"] for part in parts)),
            negative=int(sum(part["negative"] for part in parts)),
            saddlepoint_fallbacks=int(sum(part["fallbacks"] for part in parts)),
        ))
    return summary


def budget_ladder(records: list[dict], layer: int, band: tuple[float, float]) -> dict:
    """Each band neuron estimated by the most expensive method of BUDGET_LADDER that the acceptance's budget
    allows it (N_eq ≤ 1/(100 p)); neurons that no method of the ladder is allowed are counted as uncovered."""
    errors, uncovered = [], 0
    by_event: dict[tuple, dict[str, dict]] = {}
    for row in records:
        if row["layer"] == layer and label(row) in BUDGET_LADDER:
            by_event.setdefault((row["seed"], row["threshold"], row["upper"]), {})[label(row)] = errors_of(row, band)
    for parts in by_event.values():
        chosen = np.full(parts[BUDGET_LADDER[0]]["rel"].shape, np.nan)
        for name in BUDGET_LADDER:
            part = parts[name]
            chosen = np.where(part["rarer_than_mc"] >= 100, part["rel"], chosen)
        errors.append(chosen[~np.isnan(chosen)])
        uncovered += int(np.isnan(chosen).sum())
    covered = np.concatenate(errors) if errors else np.array([])
    return dict(layer=layer, covered=int(covered.size), uncovered=uncovered,
                median_rel_error=float(np.median(covered)) if covered.size else None)


def markdown_table(summary: list[dict]) -> str:
    """The docs/results.md table: one row per (layer, method)."""
    lines = ["| layer | method | FLOPs | N_eq | neurons in band | median rel. error | neurons with p ≤ 1/(100 N_eq) "
             "| their median rel. error | clipped | saddlepoint fallbacks |", "|---" * 10 + "|"]
    for row in summary:
        at_100x = "–" if row["median_rel_error_100x"] is None else f"{row['median_rel_error_100x']:.1%}"
        lines.append(f"| {row['layer']} | {row['method']} | {row['flops']:.2e} | {row['n_eq']:.3g} | {row['neurons']} "
                     f"| {row['median_rel_error']:.1%} | {row['neurons_100x']} | {at_100x} | {row['clipped']} "
                     f"| {row['saddlepoint_fallbacks']} |")
    return "\n".join(lines)


def plot(records: list[dict], methods: list[str], out: Path) -> None:
    """Relative error against the true probability per neuron, one panel per layer, MC at equal FLOPs dashed."""
    fig, axes = plt.subplots(1, len(LAYERS), figsize=(6 * len(LAYERS), 4.5), sharey=True)
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for axis, layer in zip(axes, LAYERS):
        for name in methods:
            rows = [row for row in records if row["layer"] == layer and label(row) == name]
            parts = [errors_of(row, PLOT_BAND) for row in rows]
            true = np.concatenate([part["true"] for part in parts])
            rel = np.concatenate([part["rel"] for part in parts])
            n_eq = parts[0]["n_eq"]
            axis.scatter(true, np.maximum(rel, 1e-5), s=4, alpha=0.5, color=colours[name], rasterized=True,
                         label=f"{name} ({n_eq:.3g} MC-equal samples)")
            grid = np.logspace(-8, 0, 50)
            axis.plot(grid, 1 / np.sqrt(n_eq * grid), "--", color=colours[name], linewidth=1)
            axis.axvline(1 / n_eq, color=colours[name], linestyle=":", linewidth=1)
        axis.axvspan(1e-6, 1e-4, color="grey", alpha=0.1)
        axis.axhline(0.3, color="black", linewidth=0.8)
        axis.set(xscale="log", yscale="log", xlim=PLOT_BAND, ylim=(1e-5, 10), xlabel="true P(z_i beyond t)",
                 title=f"layer {layer}: after {layer - 1} ReLU layer{'s' if layer > 2 else ''}, width {WIDTH}")
    axes[0].set_ylabel("|estimate / truth - 1|")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Tail probabilities: kprop (dots) vs Monte Carlo at equal FLOPs (dashed: 1/sqrt(N p); "
                 "dotted: p = 1/N)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(out.with_suffix(suffix), dpi=110)
    plt.close(fig)


def write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream)
    os.replace(temp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--replot", action="store_true", help="only summarise and plot the saved results of every seed")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.replot:
        for seed in args.seeds:
            write_json(RESULTS / f"tail_bench_seed{seed}.json", run([seed]))
    records = [row for path in sorted(RESULTS.glob("tail_bench_seed*.json")) for row in json.loads(path.read_text())]
    summary = summarise(records, (1e-6, 1e-4))
    for row in summary:
        print(json.dumps(row))
    print(markdown_table(summary))
    for layer in LAYERS:
        print("budget ladder", json.dumps(budget_ladder(records, layer, (1e-6, 1e-4))))
    plot(records, ["lpe K=2 simple", "lpe K=3 simple factored", "edgeworth K=3 simple", "saddlepoint K=2 augment",
                  "saddlepoint K=3 simple factored"], FIGURE)


if __name__ == "__main__":
    main()
