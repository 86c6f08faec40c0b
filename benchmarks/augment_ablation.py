"""Which of K = 3 AUGMENT's extra terms carry its gain over K = 3 SIMPLE (issue 15; docs/results.md, "Which augment
terms matter").

A *hybrid plan* is the factored AUGMENT plan (``compile_plan(3, "augment", "factored")``) with only some of its
extra (cost-3) diagrams kept and κ_4 kept either at r = 1 (AUGMENT's n×n core) or r = 2 (SIMPLE's pure trace).
The extra diagrams are grouped by what they read and where they land:

- where: ``two`` the two-coordinate slices (1,1), (2,1), (2,2) (κ_2's off-diagonal, κ_3's (2,1) slice, κ_4's
  (2,2) slice), ``top`` the all-distinct slice (1,1,1) of the new κ_3, ``k4`` κ_4's own (3,1) and (2,1,1) slices
  (formed only when κ_4 is kept at r = 1);
- what: ``k2k3`` κ_2 × κ_3 (κ_3's (3) or (2,1) slice times one κ_2 edge), ``k2k4`` κ_2 × κ_4's (4) or (2,2)
  slice, ``k4off`` a block on κ_4's (3,1) or (2,1,1) slice (its off-diagonal), ``k2cube`` κ_2³ (the third Mehler
  term on two coordinates; the doubled-edge path κ_2[ik] κ_2[jk]² on the top slice); ``base`` (on κ_4's own
  slices only) the terms of cost ≤ 2, which K = 3 SIMPLE would have there if it tracked those slices.

Every hybrid runs on the factored engine (mechest.kprop.factored, the oracle of the factored term set); with
nothing extra and r = 2 it is K = 3 SIMPLE, with everything and r = 1 it is factored K = 3 AUGMENT.

    PYTHONPATH=src python benchmarks/augment_ablation.py --configs simple augment core core+two:all ...
    PYTHONPATH=src python benchmarks/augment_ablation.py --width 64 --mc 10000000   # own Monte Carlo truths

A config is ``simple`` / ``augment`` or ``+``-joined groups ``WHERE:WHAT`` (``all`` for either, e.g.
``top:k2k3``); κ_4 is kept at r = 1 iff some ``k4`` group is on, and ``core`` = ``k4:all`` (κ_4 at r = 1 with
every term of its new slices). ``augment-G-H`` is AUGMENT without groups G, H (``augment-core``: κ_4 at r = 2 with
every other extra term). A suffix ``/traced``, ``/cube`` or ``/quad`` (repeatable) drops the terms of κ_4's
(2,1,1) slice of that kind (``summed_kind``), diagrams and pK → K terms alike. Scores: output mean of
random_mlp(width, depth, "relu", seed) against the committed 1e8-sample truths (256×4, seeds 0..2) or against
Monte Carlo truths computed here (``--mc N``, seed 9000 + s, noise floor Var/N subtracted). Hybrids that read
κ_4's pure-trace piece on the top slice (e.g. ``top:all``, ``augment-core``) are refused by the factored engine
(NotImplementedError: a scalar core factor in its forests); the others run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import mechest
from mechest.estimators.truth import compute_truth, score
from mechest.experiments.bench import find_truth
from mechest.kprop.engine import collect_propagation, input_tower
from mechest.kprop.factored import TOP, hidden_states
from mechest.kprop.plan import Plan, SliceTerm, compile_plan, needed_slice_types
from mechest.math.combinatorics import block_cost, tracked_slice_types

TRUTHS = Path(__file__).resolve().parent / "data" / "truths"
WHERE = ("two", "top", "k4")
WHAT = ("base", "k2k3", "k2k4", "k4off", "k2cube")


def where_of(p: tuple[int, ...]) -> str:
    if p == TOP:
        return "top"
    if sum(p) == 4 and p not in ((4,), (2, 2)):
        return "k4"
    return "two"


def what_of(term: SliceTerm) -> str:
    kinds = {(b.degree, b.slice_type) for b in term.blocks}
    if sum(block_cost(b.slice_type) for b in term.blocks) < 3:
        return "base"
    if kinds & {(4, (3, 1)), (4, (2, 1, 1))}:
        return "k4off"
    if any(degree == 4 for degree, _ in kinds):
        return "k2k4"
    if any(degree == 3 for degree, _ in kinds):
        return "k2k3"
    return "k2cube"


def extra_terms() -> dict[tuple[int, ...], list[tuple[SliceTerm, str, str]]]:
    """AUGMENT's terms that SIMPLE lacks, per slice, with their (where, what) group."""
    simple = compile_plan(3, "simple", "factored")
    augment = compile_plan(3, "augment", "factored")
    out = {}
    for p, terms in augment.diagrams.items():
        base = set(simple.diagrams.get(p, ()))
        out[p] = [(t, where_of(p), what_of(t)) for t in terms if t not in base]
    return out


def _groups(names: list[str]) -> set[tuple[str, str]]:
    out = set()
    for name in names:
        where, what = name.split(":")
        out |= {(w, x) for w in (WHERE if where == "all" else (where,)) for x in (WHAT if what == "all" else (what,))}
    return out


def summed_kind(blocks) -> str:
    """How a term of κ_4's (2,1,1) slice enters the capped sum Σ_a K[a,a,b,c] of its r = 1 projection: ``traced``
    (it multiplies an all-distinct 3-tensor: the previous κ_3 or the new pK_3, a contraction of every κ_3 source),
    ``cube`` (the doubled coordinate a is joined to both b and c: an n×n matrix product) or ``quad`` (O(n²))."""
    if any(len(b.axes) == 3 and b.slice_type == TOP for b in blocks):
        return "traced"
    touching = [b for b in blocks if 0 in b.axes and len(b.axes) > 1]
    if len(touching) == 1 and len(touching[0].axes) == 3 and touching[0].axes[0] != 0:
        return "quad"  # a κ_4 (2,1,1) block doubled elsewhere: a is a leaf
    reached = {axis for b in touching for axis in b.axes}
    return "cube" if {1, 2} <= reached else "quad"


def hybrid_plan(config: str) -> Plan:
    """The factored AUGMENT plan restricted to SIMPLE's terms plus the groups named in ``config``."""
    augment = compile_plan(3, "augment", "factored")
    if config == "augment":
        return augment
    config, *cuts = config.split("/")
    if config == "augment" or config.startswith("augment-"):  # everything but the named groups
        dropped = [g for g in config.removeprefix("augment").split("-") if g]
        groups = ["core", "all:all"]
    else:
        dropped, groups = [], ([] if config == "simple" else config.split("+"))
    groups = ["k4:all" if g == "core" else g for g in groups]
    dropped = ["k4:all" if g == "core" else g for g in dropped]
    wanted = _groups(groups) - _groups(dropped)
    core = any(where == "k4" for where, _ in wanted)
    radial = dict(augment.radial)
    radial[4] = 1 if core else 2
    tracked = tracked_slice_types(3, "augment")
    conversions = {p: augment.conversions[p] for p in augment.slice_types}
    slice_types = needed_slice_types(tuple(p for p in tracked if p in conversions), radial, conversions)
    simple = compile_plan(3, "simple", "factored")
    extras = extra_terms()
    diagrams = {}
    for p in slice_types:
        kept = list(simple.diagrams.get(p, ()))
        kept += [t for t, where, what in extras[p] if (where, what) in wanted]
        diagrams[p] = tuple(t for t in augment.diagrams[p] if t in kept)  # augment's order
    conversions = {p: conversions[p] for p in slice_types}
    if (2, 1, 1) in diagrams:
        for cut in cuts:
            diagrams[(2, 1, 1)] = tuple(t for t in diagrams[(2, 1, 1)] if summed_kind(t.blocks) != cut)
            conversions[(2, 1, 1)] = tuple(c for c in conversions[(2, 1, 1)]
                                           if len(c.parts) == 1 or summed_kind(c.parts) != cut)  # keep pK itself
    block_types = frozenset((b.degree, b.slice_type) for terms in diagrams.values() for t in terms for b in t.blocks)
    k_max = max(max(t.derivatives) for terms in diagrams.values() for t in terms)
    return replace(augment, variant=f"hybrid[{config}]", radial=radial, slice_types=slice_types, diagrams=diagrams,
                   conversions=conversions, block_types=block_types, k_max=k_max)


def run(net: mechest.MLP, plan: Plan) -> torch.Tensor:
    hidden = (state.tower for state in hidden_states(net, plan))
    return collect_propagation(net, input_tower(net.input_dim, plan, net.weights[0]), hidden).mean


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["simple", "augment"])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mc", type=int, default=None, help="own Monte Carlo truths with this many samples")
    parser.add_argument("--truths", type=Path, default=Path("/tmp/augment_ablation_truths"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nets = [mechest.random_mlp(args.width, args.depth, "relu", seed=s) for s in args.seeds]
    if args.mc is None:
        truths = [find_truth(net, 10**8, [TRUTHS]) for net in nets]
    else:
        args.truths.mkdir(parents=True, exist_ok=True)
        truths = [compute_truth(net, args.mc, args.truths / f"{args.width}x{args.depth}-{s}-{args.mc}.npz",
                                seed=9000 + s, dtype=torch.float32) for net, s in zip(nets, args.seeds, strict=True)]
    floors = [float(np.mean(t.variance) / t.samples / np.mean(t.variance)) for t in truths]
    print(json.dumps({"width": args.width, "depth": args.depth, "seeds": args.seeds,
                      "noise_floor_over_var": float(np.mean(floors))}), flush=True)
    for config in args.configs:
        plan = hybrid_plan(config)
        start = time.perf_counter()
        errors = [score(run(net, plan).double(), truth).relative for net, truth in zip(nets, truths, strict=True)]
        print(json.dumps({"config": config, "mse_over_var": float(np.mean(errors)), "per_net": errors,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
