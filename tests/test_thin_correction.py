"""The thin correction leg of the K = 3 executor (mechest.kprop.executor.ThinCorrection, docs/method.md §7.10): at
full rank it equals the exact factored K = 3 to round-off (square and odd networks, with compression and Strassen);
its split of the correction is right (a closed form on the first layer, the exact Q on every layer); its (2,1) and
(3) slices and its mapping equal those of the dense κ_3 its factors stand for; numpy equals torch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import odd_network

import mechest
from mechest.kprop import executor as xprop
from mechest.kprop.backends import layers_of, torch_backend
from mechest.kprop.executor import nonlinearity
from mechest.kprop.spec import executor_spec, fourth_core_spec

scipy_special = pytest.importorskip("scipy.special")

NUMPY = xprop.Backend(np, scipy_special.ndtr)
TORCH = xprop.Backend(torch, torch.special.ndtr)
SPEC = executor_spec(3, "simple", max_width=16)
RTOL = 1e-10


def square_layers(width: int, depth: int, seed: int) -> xprop.Layers:
    """A bias-free ReLU net of He-init square weights (WhestBench's kind), column convention, numpy float64."""
    rng = np.random.default_rng(seed)
    return xprop.relu_layers([rng.normal(0.0, np.sqrt(2.0 / width), size=(width, width)) for _ in range(depth)])


def thin(rank: int, power: int = 1) -> xprop.PlanOptions:
    """The cost options of thin correction legs of ``rank`` alone."""
    return xprop.PlanOptions(correction=xprop.ThinCorrection(rank, power))


def assert_close(got: xprop.Cumulants, expected: xprop.Cumulants) -> None:
    """Every layer's mean and covariance, and the output's cumulants where present, equal to 1e-10 relative."""
    pairs = list(zip(got.layer_means + got.layer_covs, expected.layer_means + expected.layer_covs, strict=True))
    pairs += [(getattr(got, name), getattr(expected, name))
              for name in ("mean", "cov", "third_diagonal", "fourth_diagonal")]
    for ours, theirs in pairs:
        assert (ours is None) == (theirs is None)
        if ours is not None:
            ours, theirs = np.asarray(ours), np.asarray(theirs)
            np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * np.abs(theirs).max())


def max_difference(got: xprop.Cumulants, expected: xprop.Cumulants) -> float:
    return max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(got.layer_means, expected.layer_means, strict=True))


@pytest.mark.parametrize(("width", "depth", "power"), [(8, 5, 1), (12, 4, 0), (6, 3, 2)])
def test_full_rank_equals_the_exact_sources_on_a_square_net(width: int, depth: int, power: int) -> None:
    layers = square_layers(width, depth, seed=width)
    exact = xprop.planned(NUMPY, layers, SPEC)
    assert_close(xprop.planned(NUMPY, layers, SPEC, options=thin(width, power)), exact)
    assert_close(xprop.planned(NUMPY, layers, SPEC, options=thin(10 * width, power)), exact)
    below = xprop.planned(NUMPY, layers, SPEC, options=thin(width // 2, power))
    assert max_difference(below, exact) > 1e-7  # a rank below the width approximates: the test above can fail


@pytest.mark.parametrize("outputs", ["mean", "cov", "marginals"])
def test_full_rank_equals_the_exact_sources_on_an_odd_network(outputs: str) -> None:
    net = odd_network(3)
    backend, layers = torch_backend(net.device), layers_of(net)
    exact = xprop.planned(backend, layers, SPEC, outputs=outputs)
    got = xprop.planned(backend, layers, SPEC, outputs=outputs, options=thin(9))
    assert_close(got, exact)
    rank_zero = xprop.planned(backend, layers, SPEC, outputs=outputs, options=thin(0))
    assert float((rank_zero.mean - exact.mean).abs().max()) > 1e-8


@pytest.mark.parametrize(("compression", "levels"), [(xprop.Compression(2, 16), 0), (xprop.Compression(1, 16, 1), 1),
                                                      (None, 2)])
def test_full_rank_combines_with_compression_and_strassen(compression: xprop.Compression | None,
                                                          levels: int) -> None:
    """A thin source is expanded when it is compressed: at full rank of both the result is still exact."""
    layers = square_layers(16, 6, seed=1)
    exact = xprop.planned(NUMPY, layers, SPEC)
    got = xprop.planned(NUMPY, layers, SPEC, options=xprop.PlanOptions(compression=compression, strassen=levels,
                                                                        correction=xprop.ThinCorrection(16)))
    assert_close(got, exact)


def test_full_rank_equals_the_exact_sources_with_the_fourth_core() -> None:
    """With κ_4's matrix core and its extra two-coordinate terms the split takes more single-edge terms (κ_3[aaa],
    κ_4[aaaa] on the doubled coordinate): still exact at full rank."""
    spec = fourth_core_spec(SPEC)
    extended = xprop.core_spec(spec, xprop.FourthCore(two=True))
    available = {(2, (1, 1)), (3, (3,)), (4, (4,))}
    assert len(xprop.separable_terms(extended, available, 1)) > len(xprop.separable_terms(SPEC, available, 1))
    net = mechest.random_mlp(10, 4, "relu", bias_var=0.05, seed=1).to(dtype=torch.float64)
    backend, layers = torch_backend(net.device), layers_of(net)
    for core in (xprop.FourthCore(two=True), xprop.FourthCore(summed=False)):
        exact = xprop.planned(backend, layers, spec, outputs="cov", core=core)
        assert_close(xprop.planned(backend, layers, spec, outputs="cov", core=core, options=thin(10)), exact)


def recorded_splits(monkeypatch: pytest.MonkeyPatch, layers: xprop.Layers, backend: xprop.Backend,
                    correction: xprop.ThinCorrection) -> list[tuple]:
    """(arguments, result) of every call of ``thin_split`` during one propagation."""
    calls = []
    split = xprop.thin_split

    def recording(*args: object) -> tuple:
        result = split(*args)
        calls.append((args, result))
        return result

    monkeypatch.setattr(nonlinearity, "thin_split", recording)
    xprop.planned(backend, layers, SPEC, options=xprop.PlanOptions(correction=correction))
    return calls


def test_the_split_on_the_first_layer_is_the_closed_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the first hidden layer (Gaussian pre-activations, no κ_3, κ_4) K_(2,1) − slice(path source) is
    e_a Σ_ab u_b + c_a w_b(2,1) Σ_ab² with u = w(1,1), e = w(1,2) − 2μ w(1,1) and
    c = w(2,2)/2 − μ w(2,1) − w(1,1)² (μ = E[a]): f = 3e, and the residual is 3(c ⊗ w(2,1) ⊙ Σ²)ᵀ."""
    calls = recorded_splits(monkeypatch, square_layers(8, 3, seed=2), NUMPY, xprop.ThinCorrection(8))
    (_, _, _, slices, wick, cumulants, _, _, _), (_, f, residual) = calls[0]
    sigma, mean = slices[(2, (1, 1))], cumulants[(1,)]
    e = wick[1][2] - 2 * mean * wick[1][1]
    c = wick[2][2] / 2 - mean * wick[2][1] - wick[1][1] ** 2
    np.testing.assert_allclose(f, 3 * e, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(residual, 3 * (c[:, None] * sigma**2 * wick[2][1][None, :]).T, rtol=1e-12,
                               atol=1e-14)
    assert np.abs(residual).max() > 1e-3 and np.abs(f).max() > 1e-3


@pytest.mark.parametrize("net", ["square", "odd"])
def test_the_split_adds_up_to_the_exact_correction_on_every_layer(monkeypatch: pytest.MonkeyPatch, net: str) -> None:
    """diag(s) + P diag(f) + residual is the exact Q = N(2,1)·g_(2,1)ᵀ + N(3)·diag(g_(3)), on every layer, and the
    single-edge part P diag(f) is a sizeable part of it."""
    if net == "square":
        backend, layers = NUMPY, square_layers(8, 5, seed=3)
    else:
        backend, layers = torch_backend(torch.device("cpu")), layers_of(odd_network(4))
    calls = recorded_splits(monkeypatch, layers, backend, xprop.ThinCorrection(2))
    assert len(calls) == len(layers.hidden()) - 1
    for (_, spec, _, _, _, cumulants, *arrays), result in calls:
        p, cubic, double, s, f, residual = (np.asarray(a) for a in (*arrays, *result))
        k21, k3 = np.asarray(cumulants[(2, 1)]), np.asarray(cumulants[(3,)])
        counts = spec["lower_slice_counts"]
        exact = counts["2,1"] * (k21 - double).T + counts["3"] * np.diag(k3 - cubic)
        split = np.diag(s) + p * f[None, :] + residual
        np.testing.assert_allclose(split, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
        assert np.abs(np.diag(residual)).max() == 0
        assert np.linalg.norm(p * f[None, :]) > 0.1 * np.linalg.norm(exact)


def dense_third(t: np.ndarray, p: np.ndarray, q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sym(Σ_k P_k⊗P_k⊗v_k T_k + T_k⊗T_k⊗Q_k) as an n×n×n array."""
    raw = np.einsum("ik,jk,lk->ijl", p, p, t * v) + np.einsum("ik,jk,lk->ijl", t, t, q)
    return sum(raw.transpose(order) for order in itertools.permutations(range(3))) / 6


def thin_group(rng: np.random.Generator, n: int, m: int, r: int) -> tuple:
    """A random thin group of one source: factors [T, P, Z] (n, 1, 2m + r), v, (s, f), L."""
    factors = rng.normal(size=(n, 1, 2 * m + r))
    return factors, rng.normal(size=(1, m)), rng.normal(size=(1, 2, m)), rng.normal(size=(1, m, r))


@pytest.mark.parametrize(("m", "r"), [(6, 3), (4, 5), (6, 0)])
def test_slices_of_a_thin_source_equal_the_dense_tensor(m: int, r: int) -> None:
    """n = 6: the (3) and (2,1) slices of a thin source, and of the source mapped by W diag(rows) (with a carried
    constant c ≠ 1 on the C side), are those of the dense κ_3 built from T, P, Q = T diag(s) + P diag(f) + Z Lᵀ."""
    n = 6
    rng = np.random.default_rng(m + r)
    group = thin_group(rng, n, m, r)
    factors, scales, diagonals, lower = group
    t, p, z = factors[:, 0, :m], factors[:, 0, m: 2 * m], factors[:, 0, 2 * m:]
    q = t * diagonals[0, 0] + p * diagonals[0, 1] + z @ lower[0].T
    dense = dense_third(t, p, q, scales[0])
    cubic, double = xprop.third_slices(np, [group])
    rows = np.arange(n)
    np.testing.assert_allclose(cubic, dense[rows, rows, rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(double, dense[rows[:, None], rows[:, None], rows[None, :]], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xprop.third_cubic(np, [group]), cubic, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xprop.expanded(np, group)[0][:, 0], np.stack([t, p, q], axis=1), rtol=0, atol=1e-12)

    weight, row_scale, c = rng.normal(size=(5, n)), rng.normal(size=n), 0.7
    carried = [(factors, c * scales, c * diagonals, c * lower)]  # what carried_third makes of c
    mapped, _ = xprop.mapped_third(np, weight, (carried, row_scale, rng.normal(size=(n, 2, n)), rng.normal(size=n)))
    scaled = weight * row_scale[None, :]
    expected = np.einsum("ai,bj,cl,ijl->abc", scaled, scaled, scaled, dense_third(t, p, c * q, c * scales[0]))
    cubic, double = xprop.third_slices(np, mapped[:1])
    out = np.arange(5)
    np.testing.assert_allclose(cubic, expected[out, out, out], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(double, expected[out[:, None], out[:, None], out[None, :]], rtol=1e-12, atol=1e-12)


def test_carried_third_scales_a_thin_source_on_its_c_side() -> None:
    rng = np.random.default_rng(5)
    group = thin_group(rng, 6, 4, 2)
    slices = {(3, (3,)): rng.normal(size=6), (3, (2, 1)): rng.normal(size=(6, 6))}
    wick = rng.normal(size=(3, 3, 6))
    term = {"c": 0.5, "k": [1, 1, 1]}
    (carried,), rows, _, _ = xprop.carried_third(np, term, slices, [group], wick)
    np.testing.assert_array_equal(carried[0], group[0])
    for ours, theirs in zip(carried[1:], group[1:], strict=True):
        np.testing.assert_allclose(ours, 0.5 * theirs, rtol=0, atol=0)
    np.testing.assert_array_equal(rows, wick[1][1])


def test_numpy_namespace_equals_torch() -> None:
    """Below full rank (the range finder and its test matrix matter), on an odd ReLU net with biases."""
    rng = np.random.default_rng(6)
    dims = [5, 9, 7, 8]
    weights = [rng.normal(0.0, np.sqrt(2.0 / d_in), size=(d_out, d_in)) for d_in, d_out in zip(dims, dims[1:])]
    weights.append(rng.normal(size=(3, 8)))
    biases = [rng.normal(0.0, 0.1, size=w.shape[0]) for w in weights]
    arrays = xprop.Layers(weights, biases, ["relu"] * 3)
    tensors = xprop.Layers([torch.tensor(w) for w in weights], [torch.tensor(b) for b in biases], ["relu"] * 3)
    got = xprop.planned(NUMPY, arrays, SPEC, outputs="marginals", options=thin(3))
    expected = xprop.planned(TORCH, tensors, SPEC, outputs="marginals", options=thin(3))
    assert_close(got, expected)
    exact = xprop.planned(NUMPY, arrays, SPEC, outputs="marginals")
    assert np.abs(got.mean - exact.mean).max() > 1e-8


def test_refuses_what_it_does_not_do() -> None:
    for rank, power in ((-1, 1), (2, -1)):
        with pytest.raises(ValueError):
            xprop.ThinCorrection(rank, power)
    with pytest.raises(ValueError, match="K = 3"):
        xprop.planned(NUMPY, square_layers(6, 3, seed=0), executor_spec(2, "augment", max_width=16), options=thin(2))


def test_cost_model_is_cheaper_than_the_exact_sources() -> None:
    """At 1024×16 a source costs 8n³ + O(n²r) a layer instead of 12n³: rank 64 saves about a quarter."""
    exact = xprop.planned_flops(1024, 16, 3)
    slim = xprop.planned_flops(1024, 16, 3, options=thin(64))
    assert 0.6 * exact < slim < 0.8 * exact
    assert xprop.planned_flops(1024, 16, 3, options=thin(0)) < slim
