"""Leading-order FLOPs (float32 units, upper bounds) of the schemes the WhestBench estimator chooses from:
``planned_flops``, ``covariance_flops``, ``mean_field_flops`` and ``choice_flops``."""

from __future__ import annotations

from .fourth import FourthCore, fourth_core
from .options import PlanOptions
from .strassen import product_flops, usable_levels


def planned_flops(width: int, depth: int, order: int, window: int | None = None, core: FourthCore | None = None,
                  options: PlanOptions = PlanOptions()) -> int:
    """Leading-order FLOPs of ``planned`` (float32 units) on the WhestBench estimator's backend for the K = 3
    (simple, factored) or K = 2 (augment) plan, layer by layer as it runs: W Wᵀ and W Σ Wᵀ on hidden layers,
    formed by the backend's ``sandwich``, which flopscope bills for the distinct entries of their symmetric
    results (n³ and 3n³, against 2n³ and 4n³ as plain products), the last layer only diag(W Σ Wᵀ), 2n³; at K = 3
    with S carried sources, mapping T, P, Q (6n³ a source, 4n³ for the newest, whose T is I; all sources one
    product) and, on hidden layers, the (2,1) slice (6n³ a source; one summed product): Θ(n³L²) without a window,
    Θ(n³(L + m²)) with window m. The elementwise work (O(n²) a layer and source, O(n) a layer for the Wick table's
    constant coefficients) is bounded by n²(22L² + 40L) at K = 3, n²·100L at K = 2 augment, plus
    SANDWICH_QUADRATIC·n² and 12000nL: an envelope of flopscope's counts (tests/test_whestbench.py), so the total is
    an upper bound (tested at n = 8–256; K = 3: 1.5% above the count at 256×8; K = 2 augment: 10% above at 256×8).

    ``options`` (``PlanOptions``): the cost options ``planned`` runs with. ``options.prune`` is ignored: pruning
    dead units only lowers the count, so the bound without it stays a bound.

    With ``options.compression`` (age a, rank r) at most a sources are full; each older one adds r columns to the
    mapping's product (its basis) and r to the slices' inner dimension (the product through its basis, 2n²r), and
    its (2,1) slice costs 12n²r more (expanding B·X' 6n²r, contracting with X' 6n²r), plus 6n²r for its cubic
    slice on the last layer; compressing a source costs (12 + 12·power)n²r and its QR 4nr². With
    ``options.strassen`` levels every n³ product but the sandwiches (the sources' mapping and slices, the last
    layer's W Σ) costs ``product_flops`` at the levels that every part's width allows (``usable_levels``).

    ``core`` (K = 3 with κ_4's matrix core without the capped sum, ``FourthCore(summed=False)``, the scheme K = 3
    "core"): plus W G Wᵀ (like W Σ Wᵀ) on every full hidden layer from the second on and diag(W G Wᵀ) (2n³) on
    the last, and its elementwise work (the core's slices and projection, the (3,1) diagrams, a larger Wick table)
    bounded by CORE_QUADRATIC·n²L + CORE_LINEAR·nL (tested against flopscope with the other bounds). With
    ``core.shape`` (the closure, ``ShapedCore``) W G Wᵀ is one W diag(d) Wᵀ (like W Wᵀ) and its last diagonal
    O(n²); its feed (``core.feed``) FEED_QUADRATIC·n² a source and layer; its slice feed of rank r
    (``core.slice_feed``) 8n²r a fed source and hidden layer (mapping y, y βᵀ, (P∘T)β and u' yᵀ; 4n²r on the
    last, which reads slice (3) alone) and at birth 10n²r (its range finder with one power iteration and
    β = Lᵀ y) + SLICE_FEED_QUADRATIC·n² + the QR's 4nr² for every source but the first-born (κ_3 is carried from
    the first source's layer on); every full source pays the feed's work, the first-born's feed being zero on the
    slice feed's columns (the sources of a group share one rank, ``joined_feed``); a compressed source loses its
    feed. Each layer's newest source joins the group of full sources: a copy of their factors (n per column).

    A sandwich that flopscope finds not symmetric within its tolerance falls back to plain products (an extra
    n³ or 2n³ the model does not include; not seen on the nets measured).

    ``options.correction`` (``ThinCorrection``, rank r): a source carries [T, P, Z] (2n + r columns; the newest
    [P, Z], n + r) instead of (T, P, Q): mapping 2n²(2n + r) and (2,1) slice 2n²(2n + r) a source, plus 4n²r a
    source and layer (Z Lᵀ inside Q and (T∘T)L), the range finder at birth ((4 + 4·power)n²r and its QR 4nr²),
    2n²r to expand Q for the last layer's cubic slice or a compression, and THIN_QUADRATIC·n² a source and layer
    of elementwise work (an envelope of flopscope's count)."""
    compression, strassen, correction = options.compression, options.strassen, options.correction
    first_carried = 0 if window is None else max(depth - window, 0)
    age = depth if compression is None else compression.age
    rank = width if compression is None else min(compression.rank, width)
    power = 0 if compression is None else compression.power
    n = width

    thin_rank = 0 if correction is None else min(correction.rank, width)
    columns = 2 * n + thin_rank  # of a thin source's [T, P, Z]

    older, newest = (columns, n + thin_rank) if correction is not None else (3 * n, 2 * n)
    levels = usable_levels(strassen, n, older, newest, *((rank,) if compression is not None else ()))

    def mapping(count: int, packed: int) -> int:  # W times every full source's factors and compressed basis at once
        return product_flops(n, n, (count - 1) * older + newest + packed * rank, levels)

    def double(count: int, packed: int) -> int:  # the (2,1) slices of every source, one summed product
        return product_flops(n, count * older + packed * rank, n, levels)

    square = product_flops(n, n, n, strassen)
    gram, sandwich = n**3, 3 * n**3  # W Wᵀ and W Σ Wᵀ by the backend's sandwich
    products, squares, thin, sources, packed, carried = 0, 0, 0, 0, 0, False
    slim, births, source_layers = 0, 0, 0  # thin correction: n²r units, sources born, (source, layer) pairs
    fed_layers = 0  # (source, hidden layer) pairs with a slice feed: every full source (the first-born's is zero)
    joined = 0  # full sources copied when the newest joins their group (``mapped_third``), over all layers
    for layer in range(depth - 1):
        products += (gram if layer == 0 or carried else 0) + (sandwich if layer > 0 else 0)
        if sources:
            products += mapping(sources, packed)
            joined += sources
            if sources > age:
                sources, packed = sources - 1, packed + 1
                squares += 12 + 12 * power
                thin += 4
                slim += 2
            products += double(sources, packed)
            squares += 12 * packed
            slim += 4 * sources
            source_layers += sources
            fed_layers += sources
        carried = layer + 1 >= first_carried
        sources, packed = (sources + 1, packed) if carried and order == 3 else (0, 0)
        births += carried and order == 3
    products += (square if depth > 1 else 0) + (mapping(sources, packed) if sources else 0)
    products += width * older * (joined + sources)
    squares += 6 * packed
    slim += 2 * sources + (4 + 4 * (correction.power if correction else 0)) * births
    source_layers += sources
    if correction is not None:
        products += width**2 * thin_rank * slim + 4 * width * thin_rank**2 * births
        products += width**2 * THIN_QUADRATIC * (source_layers + births)
    quadratic = (22 * depth**2 + 40 * depth if order == 3 else 100 * depth) + SANDWICH_QUADRATIC
    cored = core is not None and order == 3
    if cored and depth > 1:
        products += gram * (depth - 2) if core.shape is not None else sandwich * (depth - 2) + square
        quadratic += CORE_QUADRATIC * depth
    if cored and core.feed:
        products += width**2 * FEED_QUADRATIC * (source_layers + births)
    if cored and core.slice_feed and births:  # the first-born source is born without (no κ_3 before it)
        feed_rank, fed_births = min(core.slice_feed, width), births - 1
        per_rank = 8 * fed_layers + 4 * sources + 10 * fed_births  # the last layer: y and u'
        products += width**2 * (feed_rank * per_rank + SLICE_FEED_QUADRATIC * fed_births)
        products += 4 * width * feed_rank**2 * fed_births
    extra = CORE_LINEAR * width * depth if cored else 0
    return (extra + products + width**2 * rank * squares + width * rank**2 * thin
            + elementwise_bound(width, depth, quadratic + (6 * depth**2 if strassen else 0)))


SANDWICH_QUADRATIC = 24
"""n² FLOPs per layer that the sandwiches add beyond their products (flopscope's check that a result is symmetric,
≈ 7n² a call, and the scaling of W diag(d) Wᵀ): an envelope of flopscope's count."""


THIN_QUADRATIC = 10
"""n² FLOPs a source and layer that the thin correction's elementwise work may add (an envelope of flopscope's
count: the left matrices X, Y, Q's assembly and the stacked factors)."""


CORE_QUADRATIC = 60
"""n² FLOPs per layer that κ_4's matrix core adds to K = 3's elementwise work (an envelope of flopscope's count)."""


FEED_QUADRATIC = 16
"""n² FLOPs a source and layer that the closure's feed (``FourthCore.feed``) adds: mapping y (2n²) and its terms
in the (2,1) slice's left matrices and rank-one part (``feed_terms``), and at birth ``feed_source``."""


SLICE_FEED_QUADRATIC = 24
"""n² FLOPs at a source's birth that the slice feed (``FourthCore.slice_feed``) adds beyond its rank-r products:
forming its leg L from κ_3's (2,1) slice (two terms) and its (2,1) slice at birth (an envelope of flopscope's
count)."""


CORE_LINEAR = 6000
"""n FLOPs per layer that κ_4's matrix core adds (mostly the Wick table's higher derivatives)."""


def elementwise_bound(width: int, depth: int, quadratic: int) -> int:
    """Bound on the O(n²) and O(n) work of a propagation: quadratic·n² + 12000·n·L (the O(n) part is mostly the
    Wick table's product of its constant coefficients with the neurons' monomials)."""
    return width**2 * quadratic + 12000 * width * depth


def covariance_flops(width: int, depth: int) -> int:
    """FLOPs of ``covariance`` (float32 units) on the WhestBench estimator's backend, an upper bound: W Σ Wᵀ, 3n³
    per layer by its ``sandwich``, and the elementwise work (≤ 200n² a layer)."""
    return 3 * width**3 * depth + elementwise_bound(width, depth, 200 * depth + SANDWICH_QUADRATIC)


def mean_field_flops(width: int, depth: int) -> int:
    """FLOPs of ``mean_field`` (float32 units), an upper bound: W·mean and Σ_j W_ij², ≤ 4n² a layer."""
    return elementwise_bound(width, depth, 4 * depth)


def choice_flops(width: int, depth: int, order: int, variant: str, window: int | None = None,
                 options: PlanOptions = PlanOptions()) -> int:
    """Upper bound on the FLOPs of one (order, variant, window) choice of the estimator as ``choice_means`` runs it:
    K = 3 simple, core or closure with ``options`` (``PlanOptions``: compressed sources, Strassen products, thin
    correction legs; ``prune`` ignored, as by ``planned_flops``), the other choices exact (their options are
    K = 3's)."""
    if order == 1:
        return mean_field_flops(width, depth)
    if (order, variant) == (2, "simple"):
        return covariance_flops(width, depth)
    if order == 3:
        return planned_flops(width, depth, order, window, fourth_core(order, variant), options)
    return planned_flops(width, depth, order, window)
