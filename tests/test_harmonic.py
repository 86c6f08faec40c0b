"""Harmonic pieces (docs/method.md §3.2–§3.4, §5): projections P_{≥r}, DS projection, HTensor slices, linear step."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from mechest.math.combinatorics import integer_partitions
from mechest.math.tensors.diagonal_slices import from_dense, slice_from_dense, symmetrize, to_dense
from mechest.math.tensors.harmonic import (
    HTensor,
    laplacian,
    laplacian_power_slices,
    linear_map,
    map_metric,
    project,
    project_slices,
    projection_coefficients,
    projection_core,
    projection_core_from_slices,
    radial_multiply,
    slice_of,
)

# Float64 round-off: every quantity is a short sum of O(1) products (at most a few hundred terms),
# so agreement to 1e-12 relative (1e-12 absolute for entries that should vanish) is far above noise.
TOL = {"rtol": 1e-12, "atol": 1e-12}
# Least squares goes through a QR factorisation whose error scales with the condition number
# (at most a few hundred here): 1e-10.
LSTSQ_TOL = {"rtol": 1e-10, "atol": 1e-10}


def random_symmetric(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return symmetrize(torch.randn((n,) * d, generator=generator, dtype=torch.float64))


def random_spd(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def least_squares_core(tensor: torch.Tensor, n: int, r: int) -> torch.Tensor:
    """argmin over symmetric C of ‖T − Sym(C ⊗ I^{⊗r})‖_F, by lstsq over a basis of symmetric tensors."""
    s = tensor.ndim - 2 * r
    basis = []
    for index in itertools.combinations_with_replacement(range(n), s):
        unit = torch.zeros((n,) * s, dtype=torch.float64)
        unit[index] = 1.0
        basis.append(symmetrize(unit))
    design = torch.stack([HTensor(b, r, n=n).to_dense().reshape(-1) for b in basis], dim=1)
    weights = torch.linalg.lstsq(design, tensor.reshape(-1, 1)).solution[:, 0]
    return sum(w * b for w, b in zip(weights, basis, strict=True))


def all_orders(d_max: int) -> list[tuple[int, int]]:
    return [(d, r) for d in range(d_max + 1) for r in range(d // 2 + 1)]


# ---------------------------------------------------------------------------------------------
# Dense projection


def test_sanity_formulas() -> None:
    n = 5
    t2, t3, t4 = random_symmetric(n, 2, 1), random_symmetric(n, 3, 2), random_symmetric(n, 4, 3)
    torch.testing.assert_close(projection_core(t2, 1), torch.diagonal(t2).sum() / n, **TOL)
    torch.testing.assert_close(projection_core(t3, 1), 3 * torch.einsum("ijj->i", t3) / (n + 2), **TOL)
    torch.testing.assert_close(projection_core(t4, 2), 3 * torch.einsum("iijj->", t4) / (n * (n + 2)), **TOL)


def test_coefficients_equal_the_uncancelled_formula() -> None:
    """The cancelled form used in code is the a_j(n, d, r') of docs/method.md §3.2 wherever the latter is defined."""

    def a(n: int, d: int, j: int, rp: int) -> Fraction:
        c = Fraction(2 * (d - rp) + n - 2, 2)
        rising = math.prod((1 - c + i for i in range(j)), start=Fraction(1))
        return (-1) ** rp * (c - rp) / (4**j * math.factorial(rp) * math.factorial(j - rp) * c * rising)

    for n in (3, 4, 7):
        for d, r in all_orders(7):
            expected = [float(sum(a(n, d, j, rp) for rp in range(r, j + 1))) for j in range(r, d // 2 + 1)]
            assert projection_coefficients(n, d, r) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize(("d", "r"), all_orders(5))
def test_projection_is_the_least_squares_projection(n: int, d: int, r: int) -> None:
    tensor = random_symmetric(n, d, seed=7 * d + r)
    torch.testing.assert_close(projection_core(tensor, r), least_squares_core(tensor, n, r), **LSTSQ_TOL)


@pytest.mark.parametrize(("d", "r"), all_orders(6))
def test_projection_is_idempotent_and_recovers_cores(d: int, r: int) -> None:
    n = 4
    tensor = random_symmetric(n, d, seed=d + 10 * r)
    once = project(tensor, r)
    torch.testing.assert_close(projection_core(once.to_dense(), r), once.core, **TOL)
    core = random_symmetric(n, d - 2 * r, seed=99)
    torch.testing.assert_close(projection_core(HTensor(core, r, n=n).to_dense(), r), core, **TOL)


@pytest.mark.parametrize("d", range(6))
def test_projection_at_zero_is_identity(d: int) -> None:
    tensor = random_symmetric(3, d, seed=d)
    torch.testing.assert_close(projection_core(tensor, 0), tensor, **TOL)


@pytest.mark.parametrize("d", range(1, 7))
def test_pieces_are_harmonic_orthogonal_and_sum_to_the_tensor(d: int) -> None:
    """h_r = C_r − R C_{r+1} (C_r the core of P_{≥r}) is traceless, the R^r h_r are orthogonal, Σ R^r h_r = T."""
    n = 3
    tensor = random_symmetric(n, d, seed=d)
    identity = torch.eye(n, dtype=torch.float64)
    cores = [projection_core(tensor, r) for r in range(d // 2 + 1)]
    pieces = []
    for r, core in enumerate(cores):
        harmonic = core - radial_multiply(cores[r + 1], identity) if r + 1 < len(cores) else core
        if harmonic.ndim >= 2:
            torch.testing.assert_close(laplacian(harmonic), torch.zeros_like(laplacian(harmonic)), **TOL)
        pieces.append(HTensor(harmonic, r, n=n).to_dense())
    torch.testing.assert_close(sum(pieces), tensor, **TOL)
    for a, b in itertools.combinations(pieces, 2):
        assert abs(torch.sum(a * b).item()) < 1e-12 * torch.sum(tensor * tensor).item()


# ---------------------------------------------------------------------------------------------
# Projection from diagonal slices


@pytest.mark.parametrize(("d", "j"), all_orders(6))
def test_laplacian_powers_on_slices(d: int, j: int) -> None:
    n = 3 if d == 6 else 4
    tensor = random_symmetric(n, d, seed=d + j)
    dense = tensor
    for _ in range(j):
        dense = laplacian(dense)
    got = laplacian_power_slices(from_dense(tensor), d, j)
    expected = from_dense(dense)
    assert set(got) <= set(expected)
    for q, s in expected.items():
        torch.testing.assert_close(got.get(q, torch.zeros_like(s)), s, **TOL)


@pytest.mark.parametrize(("d", "r"), all_orders(6))
def test_slice_projection_equals_dense_projection(d: int, r: int) -> None:
    n = 3 if d == 6 else 4
    tensor = random_symmetric(n, d, seed=3 * d + r)
    got = projection_core_from_slices(from_dense(tensor), n, d, r)
    torch.testing.assert_close(got, projection_core(tensor, r), **TOL)
    assert project_slices(from_dense(tensor), n, d, r).order == d


def test_slice_projection_with_absent_slices() -> None:
    """Absent slices are zeros: dropping (1,1,1,1) as K = 3 does must match the dense projection of the rest."""
    n, d = 4, 4
    slices = from_dense(random_symmetric(n, d, seed=5))
    del slices[(1, 1, 1, 1)]
    for r in range(3):
        expected = projection_core(to_dense(slices, n, d), r)
        torch.testing.assert_close(projection_core_from_slices(slices, n, d, r), expected, **TOL)


def test_slice_projection_is_differentiable_and_runs_in_float32() -> None:
    n, d = 3, 4
    slices = {p: s.requires_grad_() for p, s in from_dense(random_symmetric(n, d)).items()}
    keys = list(slices)
    assert torch.autograd.gradcheck(
        lambda *s: projection_core_from_slices(dict(zip(keys, s, strict=True)), n, d, 1), tuple(slices.values())
    )
    single = {p: s.detach().float() for p, s in slices.items()}
    got = projection_core_from_slices(single, n, d, 1)
    assert got.dtype == torch.float32
    # float32 round-off on O(1) sums.
    expected = projection_core_from_slices(slices, n, d, 1).detach()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Slices of an HTensor


def slice_cases() -> list[tuple[tuple[int, ...], int]]:
    return [(p, r) for d in range(7) for p in integer_partitions(d) for r in range(min(d // 2, 3) + 1)]


@pytest.mark.parametrize("with_metric", [False, True])
@pytest.mark.parametrize(("p", "r"), slice_cases())
def test_htensor_slices_equal_dense_slices(p: tuple[int, ...], r: int, with_metric: bool) -> None:
    d = sum(p)
    n = max(len(p), 2)
    core = random_symmetric(n, d - 2 * r, seed=d + r)
    metric = random_spd(n, seed=d) if with_metric else None
    h = HTensor(core, r, metric, n=n)
    torch.testing.assert_close(slice_of(h, p), slice_from_dense(h.to_dense(), p), **TOL)


def test_htensor_slices_with_low_rank_metric() -> None:
    """M = W Wᵀ as produced by the linear step (rank-deficient when W is wide)."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    h = HTensor(random_symmetric(5, 2, seed=1), 1, map_metric(weight))
    for p in integer_partitions(4):
        torch.testing.assert_close(slice_of(h, p), slice_from_dense(h.to_dense(), p), **TOL)


def test_htensor_slice_is_differentiable() -> None:
    core = random_symmetric(3, 1).requires_grad_()
    metric = random_spd(3).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, m: slice_of(HTensor(c, 1, m), (2, 1)), (core, metric))


# ---------------------------------------------------------------------------------------------
# Linear step


def contract_dense(tensor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    out = tensor
    for _ in range(tensor.ndim):
        out = torch.tensordot(out, weight, dims=([0], [1]))
    return out


@pytest.mark.parametrize("with_metric", [False, True])
@pytest.mark.parametrize(("s", "r"), [(0, 1), (1, 0), (1, 1), (2, 1), (0, 2), (3, 0), (2, 2), (1, 2)])
@pytest.mark.parametrize("n_out", [2, 3, 5])
def test_linear_map_equals_dense_contraction(s: int, r: int, with_metric: bool, n_out: int) -> None:
    n_in = 3
    generator = torch.Generator().manual_seed(s + 10 * r + n_out)
    weight = torch.randn(n_out, n_in, generator=generator, dtype=torch.float64)
    h = HTensor(random_symmetric(n_in, s, seed=s), r, random_spd(n_in) if with_metric else None, n=n_in)
    mapped = linear_map(h, weight)
    assert mapped.n == n_out and mapped.r == r
    torch.testing.assert_close(mapped.to_dense(), contract_dense(h.to_dense(), weight), **TOL)
    shared = linear_map(h, weight, mapped_metric=map_metric(weight, h.metric))
    torch.testing.assert_close(shared.to_dense(), mapped.to_dense(), **TOL)


def test_linear_map_with_orthogonal_weight_keeps_the_pieces() -> None:
    """An orthogonal W maps I to I, so P_{≥r} commutes with it and the mapped core is the projection."""
    n, d, r = 4, 4, 1
    weight = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))[0]
    tensor = random_symmetric(n, d, seed=8)
    mapped = linear_map(project(tensor, r), weight)
    torch.testing.assert_close(mapped.metric, torch.eye(n, dtype=torch.float64), **TOL)
    torch.testing.assert_close(mapped.core, projection_core(contract_dense(tensor, weight), r), **TOL)


def test_htensor_validation() -> None:
    assert HTensor(torch.zeros(3, 3), 1).n == 3
    assert HTensor(torch.tensor(1.0), 2, torch.eye(4)).n == 4
    assert HTensor(torch.tensor(1.0), 2, n=5).order == 4
    with pytest.raises(ValueError):
        HTensor(torch.tensor(1.0), 1)
    with pytest.raises(ValueError):
        HTensor(torch.zeros(3), 1, torch.eye(4))
    with pytest.raises(ValueError):
        projection_coefficients(3, 3, 2)
