"""Tests of mechest.math.combinatorics against OEIS counts, brute-force enumeration, exact rational identities and
the term-count goldens of docs/method.md §6.4."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import pytest

from mechest.math.combinatorics import (
    VARIANTS,
    Diagram,
    Vector,
    admissible_diagrams,
    block_cost,
    d_max,
    diagram_budget,
    diagram_coefficient,
    diagram_degrees,
    diagram_orbit,
    factored_keeps_term,
    integer_partitions,
    is_admissible,
    is_admissible_block,
    is_connected,
    is_hypertree,
    leg_partition_count,
    power_to_cumulant_terms,
    power_type,
    radial_index,
    set_partition_count_of_type,
    set_partitions,
    slice_symmetries,
    support,
    term_counts,
    tracked_slice_types,
    vector_partitions,
)

PARTITION_NUMBERS = (1, 1, 2, 3, 5, 7, 11, 15, 22, 30)  # OEIS A000041
BELL_NUMBERS = (1, 1, 2, 5, 15, 52, 203, 877)  # OEIS A000110
SMALL_VECTORS = (
    (), (1,), (4,), (1, 1), (2, 1), (2, 2), (3, 2), (1, 1, 1), (2, 1, 1), (2, 2, 1), (1, 1, 1, 1), (3, 1, 1, 1),
)


# ---------------------------------------------------------------------------------------------
# Brute-force helpers


def legs_of(vec: Vector) -> tuple[int, ...]:
    """The coordinate of each labelled leg: vec_j legs on coordinate j."""
    return tuple(j for j, x in enumerate(vec) for _ in range(x))


def vector_partition_of(blocks: tuple[tuple[int, ...], ...], legs: tuple[int, ...], m: int) -> Diagram:
    """The vector partition induced by a set partition of labelled legs: per block, its leg count per coordinate."""
    return tuple(sorted((tuple(sum(legs[leg] == j for leg in blk) for j in range(m)) for blk in blocks), reverse=True))


def leg_partition_types(vec: Vector) -> Counter[Diagram]:
    """How many set partitions of the labelled legs of vec induce each vector partition."""
    legs = legs_of(vec)
    return Counter(vector_partition_of(sp, legs, len(vec)) for sp in set_partitions(len(legs)))


def joint_cumulant(values: list[list[Fraction]], probs: list[Fraction]) -> Fraction:
    """Exact joint cumulant κ(Y_1..Y_d) of a finite distribution by the Möbius formula over set partitions.

    values[l][s] is Y_l at support point s, which has probability probs[s].
    """
    d = len(values)

    def moment(block: tuple[int, ...]) -> Fraction:
        return sum((pr * math.prod(values[index][s] for index in block) for s, pr in enumerate(probs)), Fraction(0))

    return sum(
        (
            (-1) ** (len(sp) - 1) * math.factorial(len(sp) - 1) * math.prod(moment(b) for b in sp)
            for sp in set_partitions(d)
        ),
        Fraction(0),
    )


def random_distribution(dim: int, points: int, seed: int) -> tuple[list[tuple[int, ...]], list[Fraction]]:
    """A random finite distribution on Z^dim with rational probabilities: correlated and non-Gaussian."""
    rng = random.Random(seed)
    support_points = [tuple(rng.randint(-3, 3) for _ in range(dim)) for _ in range(points)]
    weights = [rng.randint(1, 9) for _ in range(points)]
    return support_points, [Fraction(w, sum(weights)) for w in weights]


def enumerate_as_designed(p: tuple[int, ...], K: int, variant: str) -> set[Diagram]:
    """docs/method.md §6.4 recipe: every k ∈ ℕ^m with |k| ≤ 2B, every vector partition of k, keep admissible ones."""
    m, twice_b = len(p), 2 * diagram_budget(K, variant)
    return {
        nu
        for k in itertools.product(range(twice_b + 1), repeat=m)
        if sum(k) <= twice_b
        for nu in vector_partitions(k)
        if is_admissible(nu, m, K, variant)
    }


# ---------------------------------------------------------------------------------------------
# Integer and set partitions


def test_integer_partitions_oeis() -> None:
    assert integer_partitions(0) == ((),)
    assert integer_partitions(4) == ((4,), (3, 1), (2, 2), (2, 1, 1), (1, 1, 1, 1))
    for d, count in enumerate(PARTITION_NUMBERS):
        parts = integer_partitions(d)
        assert len(parts) == len(set(parts)) == count
        assert all(sum(p) == d and list(p) == sorted(p, reverse=True) and all(x > 0 for x in p) for p in parts)


def test_set_partitions_bell() -> None:
    assert set_partitions(0) == ((),)
    for n, count in enumerate(BELL_NUMBERS):
        parts = set_partitions(n)
        assert len(parts) == len({frozenset(map(frozenset, sp)) for sp in parts}) == count
        for sp in parts:
            assert sorted(x for blk in sp for x in blk) == list(range(n))
            assert all(list(blk) == sorted(blk) and blk for blk in sp)


def test_set_partition_count_of_type() -> None:
    assert set_partition_count_of_type(()) == 1
    assert set_partition_count_of_type((2, 1, 1)) == 6
    assert set_partition_count_of_type((2, 2)) == 3
    for d in range(8):
        by_type = Counter(tuple(sorted(map(len, sp), reverse=True)) for sp in set_partitions(d))
        assert set(by_type) == set(integer_partitions(d))
        for p in integer_partitions(d):
            assert set_partition_count_of_type(p) == by_type[p]


# ---------------------------------------------------------------------------------------------
# Vector partitions, c(ν), connectivity


def test_vector_partitions_exact_lists() -> None:
    assert vector_partitions(()) == ((),)
    assert vector_partitions((0, 0)) == ((),)
    assert vector_partitions((2,)) == (((2,),), ((1,), (1,)))
    assert vector_partitions((1, 1)) == (((1, 1),), ((1, 0), (0, 1)))
    assert vector_partitions((2, 1)) == (
        ((2, 1),),
        ((2, 0), (0, 1)),
        ((1, 1), (1, 0)),
        ((1, 0), (1, 0), (0, 1)),
    )


@pytest.mark.parametrize("vec", SMALL_VECTORS)
def test_vector_partitions_are_the_types_of_leg_set_partitions(vec: Vector) -> None:
    parts = vector_partitions(vec)
    assert len(parts) == len(set(parts))
    assert set(parts) == set(leg_partition_types(vec))
    for nu in parts:
        assert list(nu) == sorted(nu, reverse=True)
        assert all(any(v) for v in nu)
        assert diagram_degrees(nu) == (vec if nu else ())


@pytest.mark.parametrize("vec", SMALL_VECTORS)
def test_coefficient_counts_leg_set_partitions(vec: Vector) -> None:
    """c(ν) = #{set partitions of the labelled legs of type ν} / Π_j k_j!, so Σ_ν c(ν) Π_j k_j! = Bell(|k|)."""
    counts = leg_partition_types(vec)
    legs_factorial = math.prod(math.factorial(x) for x in vec)
    for nu in vector_partitions(vec):
        assert diagram_coefficient(nu) == Fraction(counts[nu], legs_factorial)
        assert leg_partition_count(nu) == counts[nu]
    assert sum(map(leg_partition_count, vector_partitions(vec))) == BELL_NUMBERS[sum(vec)]


def test_coefficient_examples() -> None:
    assert diagram_coefficient(()) == 1
    assert diagram_coefficient(((1, 1), (1, 1))) == Fraction(1, 2)
    assert diagram_coefficient(((1, 2),)) == Fraction(1, 2)
    assert diagram_coefficient(((4,),)) == Fraction(1, 24)
    assert diagram_coefficient(((2, 1), (2, 1), (1, 0))) == Fraction(1, 2 * 2**2)


def test_is_connected_examples() -> None:
    assert is_connected((), 1)
    assert not is_connected((), 2)
    assert is_connected(((3,),), 1)
    assert is_connected(((1, 1),), 2)
    assert not is_connected(((2, 0), (0, 3)), 2)
    assert not is_connected(((1, 1, 0),), 3)
    assert is_connected(((1, 1, 0), (0, 1, 1)), 3)
    assert not is_connected(((1, 1, 0, 0), (0, 0, 1, 1)), 4)


@pytest.mark.parametrize("vec", [v for v in SMALL_VECTORS if v])
def test_is_connected_brute_force(vec: Vector) -> None:
    """Connected ⇔ no split of [m] into ≥ 2 groups has every block inside one group."""
    m = len(vec)
    for nu in vector_partitions(vec):
        splittable = any(
            len(sp) > 1 and all(any(set(support(v)) <= set(blk) for blk in sp) for v in nu) for sp in set_partitions(m)
        )
        assert is_connected(nu, m) == (not splittable)


# ---------------------------------------------------------------------------------------------
# Variants (docs/method.md §4.2)


def test_variant_tables() -> None:
    assert [d_max(K, "simple") for K in (1, 2, 3, 4)] == [2, 2, 4, 4]
    assert [d_max(K, "augment") for K in (1, 2, 3, 4)] == [2, 4, 4, 6]
    assert [d_max(K, "base") for K in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert [diagram_budget(K, "simple") for K in (1, 4)] == [0, 3]
    assert [diagram_budget(K, "base") for K in (1, 4)] == [0, 3]
    assert [diagram_budget(K, "augment") for K in (1, 4)] == [1, 4]
    towers = {  # degree → r_x for d = 1..6, the towers of docs/method.md §4.2
        (1, "simple"): (0, 1, -1, -1, -1, -1),
        (1, "augment"): (0, 1, -1, -1, -1, -1),
        (1, "base"): (0, -1, -1, -1, -1, -1),
        (2, "simple"): (0, 0, -1, -1, -1, -1),
        (2, "augment"): (0, 0, 1, 2, -1, -1),
        (3, "simple"): (0, 0, 0, 2, -1, -1),
        (3, "augment"): (0, 0, 0, 1, -1, -1),
        (3, "base"): (0, 0, 0, -1, -1, -1),
        (4, "simple"): (0, 0, 0, 0, -1, -1),
        (4, "augment"): (0, 0, 0, 0, 1, 3),
    }
    for (K, variant), rs in towers.items():
        assert tuple(radial_index(d, K, variant) for d in range(1, 7)) == rs
    with pytest.raises(ValueError):
        d_max(2, "old")
    with pytest.raises(ValueError):
        radial_index(0, 2, "simple")


def test_tracked_slice_types() -> None:
    assert tracked_slice_types(1, "simple") == ((1,), (2,))
    assert tracked_slice_types(1, "base") == ((1,),)
    assert tracked_slice_types(2, "simple") == ((1,), (2,), (1, 1))
    every_up_to_4 = [p for d in range(1, 5) for p in integer_partitions(d)]
    assert list(tracked_slice_types(3, "simple")) == [p for p in every_up_to_4 if p != (1, 1, 1, 1)]
    for variant in VARIANTS:
        for K in (1, 2, 3, 4):
            types = tracked_slice_types(K, variant)
            for p in types:
                assert radial_index(sum(p), K, variant) >= 0
                # downward closed: every sub-type u ≤ p (as vectors) is tracked, as pK → K needs
                assert all(power_type(u) in types for rho in vector_partitions(p) for u in rho)


# ---------------------------------------------------------------------------------------------
# Admissible diagrams (docs/method.md §6.4)


def test_block_costs() -> None:
    costs = {
        1: [(1, 1)],
        2: [(3,), (2, 1), (1, 1, 1), (4,), (2, 2)],
        3: [(3, 1), (2, 1, 1), (1, 1, 1, 1)],
        4: [(5,), (4, 1), (3, 2), (2, 2, 1), (6,), (4, 2), (2, 2, 2)],
    }
    for cost, blocks in costs.items():
        assert all(block_cost(v) == cost for v in blocks)
    assert block_cost((2, 0, 2)) == 2
    # every admissible block has |v| ≤ 2 cost(v), hence |k(ν)| ≤ 2B
    for v in itertools.product(range(7), repeat=3):
        if any(v) and is_admissible_block(v, 4, "augment"):
            assert sum(v) <= 2 * block_cost(v)
    assert not is_admissible_block((2, 0), 4, "augment")  # variance: in the Gaussian reference
    assert not is_admissible_block((0, 1), 4, "augment")  # mean: in the Gaussian reference
    assert not is_admissible_block((4,), 3, "base")  # κ_4 not in the BASE K=3 tower


GOLDEN_TERM_COUNTS = {
    "simple": {1: (2, 2), 2: (3, 3), 3: (40, 35), 4: (171, 95)},
    "augment": {1: (2, 2), 2: (27, 25), 3: (142, 91), 4: (2950, 1355)},
    "base": {1: (1, 1), 2: (3, 3), 3: (18, 15), 4: (171, 95)},
}


@pytest.mark.parametrize(("variant", "K"), [(v, K) for v in VARIANTS for K in (1, 2, 3, 4)])
def test_term_count_goldens(variant: str, K: int) -> None:
    """terms = Σ_p |D_p| over tracked p; isomorphism classes = orbits under the p-preserving permutations."""
    assert term_counts(K, variant) == GOLDEN_TERM_COUNTS[variant][K]


@pytest.mark.parametrize(
    ("variant", "K"), [(v, K) for v in VARIANTS for K in (1, 2, 3)] + [("simple", 4), ("base", 4), ("augment", 4)]
)
def test_enumeration_matches_design_recipe(variant: str, K: int) -> None:
    """The orbits of admissible_diagrams expand to exactly docs/method.md §6.4's filtered vector partitions; orbits are
    disjoint, invariant, their sizes divide |symmetries|, and c(ν) is constant on each."""
    for p in tracked_slice_types(K, variant):
        terms = admissible_diagrams(p, K, variant)
        expanded = [nu for t in terms for nu in diagram_orbit(t.diagram, p)]
        assert len(expanded) == len(set(expanded)) == sum(t.orbit_size for t in terms)
        assert set(expanded) == enumerate_as_designed(p, K, variant)
        for t in terms:
            orbit = diagram_orbit(t.diagram, p)
            assert t.p == p and t.diagram == orbit[0] and t.orbit_size == len(orbit)
            assert len(slice_symmetries(p)) % t.orbit_size == 0
            assert all(diagram_coefficient(nu) == t.coefficient for nu in orbit)
            assert t.cost <= diagram_budget(K, variant)
            assert sum(t.degrees) <= 2 * diagram_budget(K, variant) and len(t.degrees) == len(p)


def _expanded(p: tuple[int, ...], K: int, variant: str) -> Counter[Diagram]:
    return Counter(nu for t in admissible_diagrams(p, K, variant) for nu in diagram_orbit(t.diagram, p))


def test_simple_k3_per_slice_lists() -> None:
    single = Counter({(): 1, ((3,),): 1, ((4,),): 1})
    pair = Counter({((1, 1),): 1, ((1, 2),): 1, ((2, 1),): 1, ((1, 1), (1, 1)): 1, ((2, 2),): 1})
    for p in ((1,), (2,), (3,), (4,)):
        assert _expanded(p, 3, "simple") == single
    for p in ((1, 1), (2, 1), (2, 2), (3, 1)):
        assert _expanded(p, 3, "simple") == pair
    paths = {((1, 0, 1), (0, 1, 1)), ((1, 1, 0), (0, 1, 1)), ((1, 1, 0), (1, 0, 1))}
    for p in ((1, 1, 1), (2, 1, 1)):
        assert set(_expanded(p, 3, "simple")) == {((1, 1, 1),)} | paths
    assert [t.orbit_size for t in admissible_diagrams((1, 1), 3, "simple")] == [1, 2, 1, 1]
    assert [t.orbit_size for t in admissible_diagrams((1, 1, 1), 3, "simple")] == [1, 3]
    assert [t.orbit_size for t in admissible_diagrams((2, 1, 1), 3, "simple")] == [1, 2, 1]
    coefficients = {t.diagram: t.coefficient for t in admissible_diagrams((1,), 3, "simple")}
    assert coefficients == {(): 1, ((3,),): Fraction(1, 6), ((4,),): Fraction(1, 24)}


def test_low_order_diagram_sets() -> None:
    """K = 1: the Gaussian term only; K = 2 SIMPLE: covariance propagation (one (1,1) edge off the diagonal)."""
    for variant in VARIANTS:
        for p in tracked_slice_types(1, variant):
            assert [t.diagram for t in admissible_diagrams(p, 1, variant)] == [()]
    assert [t.diagram for t in admissible_diagrams((1, 1), 2, "simple")] == [((1, 1),)]
    assert [t.diagram for t in admissible_diagrams((2,), 2, "simple")] == [()]


def _gaussian_moment(n: int, mu: Fraction, var: Fraction) -> Fraction:
    """E[Z^n], Z ~ N(μ, σ²): Σ_j C(n, 2j) (2j−1)!! σ^{2j} μ^{n−2j}."""
    return sum(
        (math.comb(n, 2 * j) * math.prod(range(1, 2 * j, 2)) * var**j * mu ** (n - 2 * j) for j in range(n // 2 + 1)),
        Fraction(0),
    )


@pytest.mark.parametrize(("powers", "seed"), [((4,), 0), ((3, 2), 1), ((2, 2, 1), 2), ((1, 1, 2), 3)])
def test_edgeworth_connected_sum_is_the_joint_cumulant(powers: tuple[int, ...], seed: int) -> None:
    """docs/method.md §6.3 derivation, exactly, for f_j(z) = z^{a_j} and a finite non-Gaussian z: the joint cumulant of
    (f_j(z_j))_j equals Σ over connected 2-mixed ν of c(ν) Π_v κ_v Π_j E_G[f_j^{(k_j)}], G the independent
    Gaussian with z's means and variances (the series stops at k ≤ a for polynomials)."""
    m = len(powers)
    points, probs = random_distribution(m, 6, seed)
    coords = [[Fraction(pt[j]) for pt in points] for j in range(m)]

    def kappa(v: Vector) -> Fraction:
        return joint_cumulant([coords[j] for j in legs_of(v)], probs)

    mu = [kappa(tuple(int(i == j) for i in range(m))) for j in range(m)]
    var = [kappa(tuple(2 * int(i == j) for i in range(m))) for j in range(m)]

    def wick(j: int, k: int) -> Fraction:
        if k > powers[j]:
            return Fraction(0)
        return math.perm(powers[j], k) * _gaussian_moment(powers[j] - k, mu[j], var[j])

    total = Fraction(0)
    for k in itertools.product(*(range(a + 1) for a in powers)):
        for nu in vector_partitions(k):
            two_mixed = all(len(support(v)) > 1 or sum(v) > 2 for v in nu)
            if two_mixed and is_connected(nu, m):
                kk = diagram_degrees(nu) or (0,) * m
                term = diagram_coefficient(nu) * math.prod(kappa(v) for v in nu)
                total += term * math.prod(wick(j, kk[j]) for j in range(m))
    target = joint_cumulant([[x**a for x in coords[j]] for j, a in enumerate(powers)], probs)
    assert total == target


# ---------------------------------------------------------------------------------------------
# Power cumulants → cumulants (docs/method.md §6.6)


def test_power_to_cumulant_checks() -> None:
    for m in (1, 2, 3, 4):
        assert power_to_cumulant_terms((1,) * m) == ((1, ((1,) * m,)),)
    assert power_to_cumulant_terms((2,)) == ((1, ((2,),)), (-1, ((1,), (1,))))
    assert power_to_cumulant_terms((2, 1)) == ((1, ((2, 1),)), (-2, ((1, 1), (1, 0))))
    assert power_to_cumulant_terms((3,)) == ((1, ((3,),)), (-3, ((2,), (1,))), (2, ((1,), (1,), (1,))))
    assert all(c != 0 for p in tracked_slice_types(4, "augment") for c, _ in power_to_cumulant_terms(p))


@pytest.mark.parametrize("p", tracked_slice_types(4, "augment"))
def test_power_to_cumulant_exact(p: tuple[int, ...]) -> None:
    """K_p (joint cumulant of the legs X_{i_1}×p_1, …) = Σ_ρ C(ρ) Π_{u∈ρ} κ(X_j^{u_j} : j ∈ supp u), exactly."""
    m = len(p)
    points, probs = random_distribution(m, 5, seed=sum(p) * 10 + m)
    coords = [[Fraction(pt[j]) for pt in points] for j in range(m)]
    direct = joint_cumulant([coords[j] for j in legs_of(p)], probs)

    def power_cumulant(u: Vector) -> Fraction:
        return joint_cumulant([[x ** u[j] for x in coords[j]] for j in support(u)], probs)

    terms = power_to_cumulant_terms(p)
    via_powers = sum((c * math.prod(power_cumulant(u) for u in rho) for c, rho in terms), Fraction(0))
    assert direct == via_powers


# ---------------------------------------------------------------------------------------------
# Factored propagation (docs/method.md §7)


def test_is_hypertree_examples() -> None:
    assert is_hypertree(())
    assert is_hypertree(((3,),))
    assert is_hypertree(((1, 1), (1, 1)))  # parallel 2-vertex blocks merge into one edge
    assert is_hypertree(((2, 1), (1, 1)))
    assert is_hypertree(((1, 1, 0), (0, 1, 1)))  # path
    assert is_hypertree(((1, 1, 1),))
    assert is_hypertree(((1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1)))  # star
    assert is_hypertree(((1, 1, 1, 0), (0, 0, 1, 1)))  # "3+2"
    assert not is_hypertree(((1, 1, 0), (1, 0, 1), (0, 1, 1)))  # κ_2 triangle
    assert not is_hypertree(((1, 1, 1), (0, 1, 1)))  # overlap of 2 vertices
    assert not is_hypertree(((1, 1, 1), (1, 1, 1)))  # repeated 3-vertex block
    assert not is_hypertree(((1, 1, 0, 0), (0, 0, 1, 1)))  # forest, not a tree


def test_factored_term_sets() -> None:
    """SIMPLE/BASE keep every term; AUGMENT drops non-hypertree top-slice diagrams and κ_K all-distinct products."""
    for variant in ("simple", "base"):
        for K in (3, 4):
            for p in tracked_slice_types(K, variant):
                assert all(factored_keeps_term(p, t.diagram, K) for t in admissible_diagrams(p, K, variant))
    top3 = (1, 1, 1)
    kept = {t.diagram: factored_keeps_term(top3, t.diagram, 3) for t in admissible_diagrams(top3, 3, "augment")}
    dropped = {nu for nu, keep in kept.items() if not keep}
    assert dropped == {((1, 1, 1), (0, 1, 1)), ((1, 1, 0), (1, 0, 1), (0, 1, 1))}
    for K in (3, 4):
        top = (1,) * K
        for t in admissible_diagrams(top, K, "augment"):
            if top in t.diagram and len(t.diagram) > 1:  # κ_K's all-distinct block times other blocks
                assert not factored_keeps_term(top, t.diagram, K)
        below_top = (2,) + (1,) * (K - 1)
        products = [t.diagram for t in admissible_diagrams(below_top, K, "augment")
                    if len(t.diagram) > 1 and any(sum(v) == K and max(v) == 1 for v in t.diagram)]
        assert products  # κ_K's all-distinct block times a κ_2 edge, dropped below the top slice too
        for t in admissible_diagrams(below_top, K, "augment"):
            assert factored_keeps_term(below_top, t.diagram, K) == (t.diagram not in products)
