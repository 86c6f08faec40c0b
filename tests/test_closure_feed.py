"""The closure's feed (``FourthCore.feed``, docs/method.md §7.9): each new κ_3 source also carries K = 3 augment's
top-slice term c·w_a(k,1) w_b(k,1) w_c(k',1) κ_4[a,b,c,c] with κ_4[a,b,c,c] read as λ·Σ_ab M_cc / 6, as
Sym(Σ_k β_k P_k ⊗ T_k ⊗ y). Oracle: the dense 3-tensors built from that definition on a tiny net."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_numpy_matches_torch, odd_network

import mechest
from mechest.kprop import executor as xprop
from mechest.kprop.backends import layers_of, torch_backend
from mechest.kprop.executor import arrays, propagation
from mechest.kprop.executor.fourth import SLICE_FEED_RANK
from mechest.kprop.factored import TOP
from mechest.kprop.spec import executor_spec

# flopscope's symmetry notes on the metered run (as in tests/test_whestbench.py)
pytestmark = pytest.mark.filterwarnings("ignore::flopscope.errors.SymmetryLossWarning")
FEED = xprop.FourthCore(summed=False, shape=1.5, feed=True)
SLICED = replace(FEED, slice_feed=64)  # rank ≥ every width here: the slice feed exact


@pytest.fixture(scope="module")
def spec() -> dict:
    return executor_spec(3, "closure", max_width=64)


def symmetrised(x: torch.Tensor) -> torch.Tensor:
    return sum(x.permute(*order) for order in itertools.permutations(range(3))) / 6


def dense_source(group: tuple, feed: tuple | None) -> torch.Tensor:
    """Sym(Σ_k P_k⊗P_k⊗v_k T_k + T_k⊗T_k⊗Q_k + Σ_ρ β_kρ P_k⊗T_k⊗y_ρ) of one group, from its factors; ``feed`` per
    source (β (S, m, R), y (n, S, R)) or, for the newest source, (β (m, R), y (n, R))."""
    factors, scales = xprop.expanded(torch, group)
    t, p, q = factors[:, :, 0], factors[:, :, 1], factors[:, :, 2]
    x = torch.einsum("isk,jsk,lsk->ijl", p, p, t * scales[None]) + torch.einsum("isk,jsk,lsk->ijl", t, t, q)
    if feed is not None:
        beta, y = feed if feed[0].ndim == 3 else (feed[0][None], feed[1][:, None])
        x = x + torch.einsum("isk,jsk,skr,lsr->ijl", p, t, beta, y)
    return symmetrised(x)


def lower_slices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.arange(x.shape[0])
    double = x[index[:, None], index[:, None], index[None, :]]
    return x[index, index, index], double - torch.diag(torch.diag(double))


def newest_group(third: tuple) -> tuple:
    fresh, v = third[2], third[3]
    eye = torch.eye(fresh.shape[0], dtype=fresh.dtype)
    if isinstance(v, tuple):
        return torch.cat([eye, fresh], 1)[:, None], *(part[None] for part in v)
    return torch.cat([eye[:, None], fresh], 1)[:, None], v[None]


def slice_feed_terms(spec: dict, slices: dict, wick: list) -> torch.Tensor:
    """Σ over augment's top-slice terms with one κ_2 edge and one κ_3 (2,1) block of Sym(c·Π_i w_i(k_i, 1) ·
    Σ[edge] · D[block]), D[x, y] = κ_3(x, x, y) (its doubled coordinate first), as dense 3-tensors."""
    letters, total = "abc", 0
    for term in spec["fourth_core"]["slice_feed"]:
        (edge,) = [axes for degree, _, axes in term["blocks"] if degree == 2]
        (block,) = [axes for degree, _, axes in term["blocks"] if degree == 3]
        subscripts = f"a,b,c,{letters[edge[0]]}{letters[edge[1]]},{letters[block[0]]}{letters[block[1]]}->abc"
        orders = [wick[k][1] for k in term["k"]]
        total = total + symmetrised(term["c"] * torch.einsum(subscripts, *orders, slices[(2, (1, 1))],
                                                             slices[(3, (2, 1))]))
    return total


@pytest.mark.parametrize("core", [FEED, SLICED], ids=["closure", "sliced"])
@pytest.mark.parametrize("correction", [None, xprop.ThinCorrection(9, 1)], ids=["full", "thin"])  # thin: full rank
@pytest.mark.parametrize("net", [mechest.random_mlp(6, 5, "relu", seed=3), odd_network(2, ("relu",) * 3)],
                         ids=["square", "odd"])
def test_the_feed_equals_its_dense_definition(spec: dict, monkeypatch: pytest.MonkeyPatch, net: mechest.MLP,
                                              correction: xprop.ThinCorrection | None,
                                              core: xprop.FourthCore) -> None:
    """At birth: the new source's all-distinct block is the path term plus the feed's definition
    Sym(c·u_a u_b w_c λΣ_ab M_cc/6) (c, Wick orders from the augment plan) and, with the slice feed at full rank,
    augment's κ_2 × κ_3 top-slice terms (``slice_feed_terms``); its lower slices plus the carried block's are the
    plan's K_(3), K_(2,1). Mapped: the factored slices (``third_slices``, ``third_cubic``) of the carried sources
    and feeds equal those of the dense tensors mapped by W⊗W⊗W (rows and c applied)."""
    records = []
    original = xprop.next_third

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        records.append((args, kwargs, out))
        return out

    monkeypatch.setattr(propagation, "next_third", spy)
    xprop.planned(torch_backend(net.device), layers_of(net), spec, outputs="marginals", core=core,
                  options=xprop.PlanOptions(correction=correction))
    full = xprop.core_spec(spec, core)
    (term,) = full["fourth_core"]["feed"]
    assert term["k"] == [1, 1, 2] and term["blocks"] == [[4, [2, 1, 1], [2, 0, 1]]]
    assert sorted(t["k"] for t in full["fourth_core"]["slice_feed"]) == [[1, 1, 3], [1, 2, 2]]
    fed = sliced = 0
    for (xp, _, slices, groups, wick, cumulants, _, _, feed_input, _), _, out in records:
        source = dense_source(newest_group(out), out[4][-1])
        cubic, double = lower_slices(source)
        if groups is not None:
            carried = [t for e in full["diagrams"] if tuple(e["p"]) == TOP for t in e["terms"] if len(t["blocks"]) == 1]
            _, _, carried_cubic, carried_double = xprop.carried_third(xp, carried[0], slices, groups, wick)
            cubic, double = cubic + carried_cubic, double + carried_double
        torch.testing.assert_close(cubic, cumulants[(3,)], rtol=0, atol=1e-14)
        torch.testing.assert_close(double, cumulants[(2, 1)], rtol=0, atol=1e-14)
        cov, u, w = slices[(2, (1, 1))], wick[1][1], wick[2][1]
        top = symmetrised(3 * torch.einsum("a,b,c,ac,bc->abc", u, u, w, cov, cov))
        multiple, metric = feed_input
        if multiple is not None:
            fed += 1
            fourth = multiple * torch.einsum("ab,c->abc", cov, metric) / 6  # κ_4[a,b,c,c] ≈ λ Σ_ab M_cc / 6
            feed = symmetrised(term["c"] * torch.einsum("a,b,c,abc->abc", u, u, w, fourth))
            assert feed.abs().max() > 1e-3 * top.abs().max()
            top = top + feed
        if core.slice_feed and (3, (2, 1)) in slices:
            sliced += 1
            feed = slice_feed_terms(full, slices, wick)
            assert feed.abs().max() > 1e-3 * top.abs().max()
            top = top + feed
        n = top.shape[0]
        distinct = torch.tensor([(a, b, c) for a, b, c in itertools.product(range(n), repeat=3)
                                 if len({a, b, c}) == 3]).T
        torch.testing.assert_close(source[tuple(distinct)], top[tuple(distinct)], rtol=0, atol=1e-14)
    assert fed == len(records) - 1  # every source but the first layer's (no κ_4 there yet)
    assert sliced == (len(records) - 1 if core.slice_feed else 0)  # nor κ_3

    third = records[-1][2]
    weight = torch.randn(4, third[2].shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    groups, feeds = xprop.mapped_third(torch, weight, third)
    cubic, double = xprop.third_slices(torch, groups, 0, feeds)
    before = sum(dense_source(g, f) for g, f in zip(third[0], third[4][:-1], strict=True))
    rows = third[1]
    before = torch.einsum("ijk,i,j,k->ijk", before, rows, rows, rows) + dense_source(newest_group(third),
                                                                                     third[4][-1])
    expected_cubic, expected_double = lower_slices(torch.einsum("ijk,ai,bj,ck->abc", before, weight, weight, weight))
    torch.testing.assert_close(cubic, expected_cubic, rtol=0, atol=1e-13)
    torch.testing.assert_close(xprop.third_cubic(torch, groups, feeds), expected_cubic, rtol=0, atol=1e-13)
    torch.testing.assert_close(xprop.off_diagonal(torch, double), expected_double, rtol=0, atol=1e-13)


def test_a_thin_source_at_full_rank_equals_the_exact_one(spec: dict) -> None:
    net = odd_network(5, ("relu",) * 3)
    layers = layers_of(net)
    exact = xprop.planned(torch_backend(net.device), layers, spec, outputs="marginals", core=FEED)
    thin = xprop.planned(torch_backend(net.device), layers, spec, outputs="marginals", core=FEED,
                         options=xprop.PlanOptions(correction=xprop.ThinCorrection(9, 1)))
    torch.testing.assert_close(thin.mean, exact.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(thin.third_diagonal, exact.third_diagonal, rtol=1e-10, atol=1e-12)


def test_the_feeds_change_the_closure_and_numpy_equals_torch(spec: dict) -> None:
    net = odd_network(6, ("relu",) * 3)
    layers = layers_of(net)
    fed = xprop.planned(torch_backend(net.device), layers, spec, outputs="mean", core=FEED)
    unfed = xprop.planned(torch_backend(net.device), layers, spec, outputs="mean",
                          core=xprop.FourthCore(summed=False, shape=FEED.shape))
    sliced = xprop.planned(torch_backend(net.device), layers, spec, outputs="mean", core=replace(FEED, slice_feed=2))
    assert (fed.mean - unfed.mean).abs().max() > 1e-8
    assert (sliced.mean - fed.mean).abs().max() > 1e-8
    # the scheme: the closure, both feeds (the slice feed at SLICE_FEED_RANK), augment's two-coordinate terms
    assert xprop.fourth_core(3, "closure") == replace(FEED, two=True, slice_feed=SLICE_FEED_RANK)
    assert_numpy_matches_torch(layers, spec, core=FEED)
    assert_numpy_matches_torch(layers, spec, core=replace(FEED, slice_feed=3))


def test_refusals() -> None:
    with pytest.raises(ValueError, match="feed"):
        xprop.FourthCore(summed=False, feed=True)
    with pytest.raises(ValueError, match="feed"):
        xprop.FourthCore(summed=False, slice_feed=4)
    with pytest.raises(ValueError, match="rank"):
        replace(FEED, slice_feed=-1)


@pytest.mark.parametrize("correction", [None, xprop.ThinCorrection(4, 1)], ids=["full", "thin"])
def test_compression_of_nothing_keeps_every_feed(spec: dict, correction: xprop.ThinCorrection | None) -> None:
    """Compression whose age is at least the number of sources compresses nothing: bit for bit the feed's run
    without compression."""
    net = mechest.random_mlp(12, 5, "relu", seed=4)
    layers = layers_of(net)
    for outputs in ("mean", "marginals"):
        options = xprop.PlanOptions(correction=correction)
        exact = xprop.planned(torch_backend(net.device), layers, spec, outputs=outputs, core=FEED, options=options)
        for age in (5, 9):
            got = xprop.planned(torch_backend(net.device), layers, spec, outputs=outputs, core=FEED,
                                options=replace(options, compression=xprop.Compression(age, 4, 1)))
            assert torch.equal(got.mean, exact.mean)
            if outputs == "marginals":
                assert torch.equal(got.third_diagonal, exact.third_diagonal)


def test_compressed_drops_the_compressed_sources_feeds(spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compressed`` on a real run's mapped sources, each feed labelled: the compressed groups' feeds are None and
    every group left full keeps the feed of the same source."""
    calls = []
    original = xprop.compressed

    def spy(xp, groups, compression, feeds=None):
        calls.append((groups, feeds))
        return original(xp, groups, compression, feeds)

    monkeypatch.setattr(propagation, "compressed", spy)
    net = mechest.random_mlp(12, 6, "relu", seed=2)
    xprop.planned(torch_backend(net.device), layers_of(net), spec, core=FEED)  # no compression: one group
    groups, feeds = calls[-1]
    assert len(groups) == len(feeds) == 1 and groups[0][0].shape[1] == 5  # the five sources, oldest first
    beta, y = feeds[0]
    labelled = torch.arange(5, dtype=beta.dtype)
    labels = [(labelled[:, None, None] + 0 * beta, labelled[None, :, None] + 0 * y)]  # each source's feed its index
    for age in (1, 2, 4):
        out, out_feeds = original(torch, groups, xprop.Compression(age, 4, 1), labels)
        assert [xprop.is_compressed(group) for group in out] == [True, False]  # the compressed group first
        assert out[0][0].shape[0] == 5 - age and out_feeds[0] is None
        kept = xprop.sources.source_range(groups[0], 5 - age)
        assert all(torch.equal(a, b) for a, b in zip(out[1], kept, strict=True))
        assert torch.equal(out_feeds[1][0], labels[0][0][5 - age:]) and torch.equal(out_feeds[1][1],
                                                                                   labels[0][1][:, 5 - age:])
    assert original(torch, groups, None, labels) == (groups, labels)
    out, out_feeds = original(torch, groups, xprop.Compression(2, 4, 1))
    assert out_feeds is None and len(out) == 2 and out[0][0].shape[0] == 3  # three compressed sources, stacked


@pytest.mark.parametrize("correction", [None, xprop.ThinCorrection(4, 1)], ids=["full", "thin"])
@pytest.mark.parametrize("age", [1, 2])
def test_full_rank_compression_equals_the_feeds_dropped_by_hand(spec: dict, monkeypatch: pytest.MonkeyPatch,
                                                                age: int,
                                                                correction: xprop.ThinCorrection | None) -> None:
    """At full rank compression is exact, so the compressed run with the feed equals the uncompressed one whose
    feeds are dropped by hand: in every layer's step all but the ``age`` newest (the sources left full), on the
    last layer's cubic slice all but the ``age`` + 1 newest (that layer does not compress)."""
    net = mechest.random_mlp(12, 7, "relu", seed=6)
    layers = layers_of(net)
    options = xprop.PlanOptions(correction=correction)
    for outputs in ("mean", "marginals"):
        got = xprop.planned(torch_backend(net.device), layers, spec, outputs=outputs, core=FEED,
                            options=replace(options, compression=xprop.Compression(age, 12, 1)))
        keep = {"count": age}
        feeds_of, last_slices = xprop.sources.mapped_feeds, xprop.marginal_slices

        def newest(xp, weight, third, target):  # every source's feed but the newest count's zero
            feeds = []
            for feed in feeds_of(xp, weight, third, target):
                if feed is not None:
                    dropped = max(feed[0].shape[0] - keep["count"], 0)
                    feed = (torch.cat([torch.zeros_like(feed[0][:dropped]), feed[0][dropped:]]), feed[1])
                feeds.append(feed)
            return feeds

        def last(*args, **kwargs):
            keep["count"] = age + 1
            return last_slices(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(xprop.sources, "mapped_feeds", newest)
            patch.setattr(propagation, "marginal_slices", last)
            expected = xprop.planned(torch_backend(net.device), layers, spec, outputs=outputs, core=FEED,
                                     options=options)
        untouched = xprop.planned(torch_backend(net.device), layers, spec, outputs=outputs, core=FEED,
                                  options=options)
        torch.testing.assert_close(got.mean, expected.mean, rtol=1e-11, atol=1e-13)
        assert (untouched.mean - expected.mean).abs().max() > 1e-9  # the dropped feeds mattered
        if outputs == "marginals":
            torch.testing.assert_close(got.third_diagonal, expected.third_diagonal, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("correction", [None, xprop.ThinCorrection(4, 1)], ids=["full", "thin"])
def test_the_feed_with_real_compression(spec: dict, correction: xprop.ThinCorrection | None) -> None:
    """Compression(1, 4, 1) on a 12-wide 5-layer ReLU net: the feed runs, is finite, and changes the estimate."""
    net = mechest.random_mlp(12, 5, "relu", seed=7)
    layers = layers_of(net)
    options = xprop.PlanOptions(compression=xprop.Compression(1, 4, 1), correction=correction)
    fed = xprop.planned(torch_backend(net.device), layers, spec, outputs="marginals", core=FEED, options=options)
    closure = xprop.planned(torch_backend(net.device), layers, spec, outputs="marginals",
                            core=xprop.FourthCore(summed=False, shape=FEED.shape), options=options)
    assert torch.isfinite(fed.mean).all() and torch.isfinite(fed.third_diagonal).all()
    assert (fed.mean - closure.mean).abs().max() > 1e-9


def test_predicted_flops_bound_the_metered_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    """planned_flops with the feed (and thin legs, compression) stays an upper bound on flopscope's count of the
    float32 run (the constants it makes stay in a dict of its own, so that later metered runs still pay for theirs)."""
    pytest.importorskip("flopscope")
    monkeypatch.setattr(arrays, "_CONSTANTS", {})
    import flopscope as flops
    import flopscope.numpy as fnp

    from mechest.integrations.whestbench.estimator import BACKEND

    spec = executor_spec(3, "closure", max_width=64)
    generator = np.random.default_rng(0)
    for width, depth, correction, compression, core in (
            (32, 5, None, None, FEED), (64, 6, xprop.ThinCorrection(8, 1), None, FEED),
            (64, 6, None, xprop.Compression(2, 16, 1), FEED),
            (64, 6, xprop.ThinCorrection(8, 1), xprop.Compression(1, 16, 1), FEED),
            (48, 6, xprop.ThinCorrection(8, 1), None, replace(FEED, slice_feed=8)),
            (64, 7, xprop.ThinCorrection(8, 1), xprop.Compression(3, 16, 1), replace(FEED, slice_feed=16)),
            (32, 5, None, None, replace(FEED, slice_feed=4))):
        columns = [fnp.asarray((generator.standard_normal((width, width)) * (2 / width) ** 0.5).astype(np.float32))
                   for _ in range(depth)]
        options = xprop.PlanOptions(compression=compression, correction=correction)
        with flops.BudgetContext(flop_budget=10**15, quiet=True) as context:
            xprop.planned(BACKEND, xprop.relu_layers(columns), spec, core=core, options=options)
            metered = context.flops_used
        predicted = xprop.planned_flops(width, depth, 3, core=core, options=options)
        assert 0.5 * predicted <= metered <= predicted, metered / predicted
