"""Matrix products by the Strassen–Winograd recursion, several at once: ``split_product`` (A·diag(s_p)·X_p for
parts X_p side by side), ``summed_product`` (Σ_p A_p B_pᵀ), ``product`` (one), and their FLOPs (``product_flops``).

The recursion, one level: cut A and B into 2×2 blocks and form (Winograd's variant, fifteen block additions)
S1 = A21 + A22, S2 = S1 − A11, S3 = A11 − A21, S4 = A12 − S2 and T1 = B12 − B11, T2 = B22 − T1, T3 = B22 − B12,
T4 = T2 − B21; seven block products M1 = A11 B11, M2 = A12 B21, M3 = S4 B22, M4 = A22 T4, M5 = S1 T1, M6 = S2 T2,
M7 = S3 T3; and C11 = M1 + M2, with U2 = M1 + M6, U3 = U2 + M7, U4 = U2 + M5: C12 = U4 + M3, C21 = U3 − M4,
C22 = U3 + M5. L levels cost 7^L products of (n/2^L)(k/2^L)(m/2^L), (7/8)^L of the dense product's
multiplications, plus additions O((7/4)^L) times the operands' size.

Layout (the reason the additions are cheap to bill and to run). An operand cut L times lives in a scratch array of
shape (7,)*L + (rows/2^L, columns/2^L), level ℓ on axis ℓ − 1. Its blocks are loaded once into slots 0–3 of every
level (slot 2·(row bit) + (column bit) for A and for the result, 2·(column bit) + (row bit) for B); each level's
additions then write the combinations in place into the slots 2–6 (``LEFT_STEPS``, ``RIGHT_STEPS``), so that slot
u of every level holds the u-th product's operand, and one batched matmul forms all 7^L block products; the
recombination (``OUT_STEPS``) runs in place from the innermost level out and leaves C's blocks in slots 0–3. Every
step is one elementwise operation on strided views of the scratch array, whatever the depth: 16 operations a
level and one matmul, no temporaries. Parts of an operand occupy column (or row) ranges of every block: the order
of the inner dimension is free, so that many products that share an operand, or whose results add up, are one
product. The namespace must take ``out=`` (numpy, flopscope.numpy; ``takes_out``); elsewhere (torch) the products
are dense, since Strassen's recursion only lowers a FLOP meter's count."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

from .arrays import workspace

LEFT_STEPS = (("add", 2, 3, 4), ("subtract", 0, 2, 6), ("copy", 3, None, 2), ("subtract", 4, 0, 5),
              ("subtract", 1, 5, 3))
"""A's combinations in place, (operation, slot, slot, target), from slots A11, A12, A21, A22: S1 = A21 + A22 → 4,
S3 = A11 − A21 → 6, A22 → 2, S2 = S1 − A11 → 5, S4 = A12 − S2 → 3; then slots 0–6 hold the left operands of
M1, M2, M4, M3, M5, M6, M7."""


RIGHT_STEPS = (("subtract", 2, 0, 4), ("subtract", 3, 2, 6), ("subtract", 3, 4, 5), ("subtract", 5, 1, 2))
"""B's combinations in place from slots B11, B21, B12, B22: T1 = B12 − B11 → 4, T3 = B22 − B12 → 6,
T2 = B22 − T1 → 5, T4 = T2 − B21 → 2; then slots 0–6 hold B11, B21, T4, B22, T1, T2, T3, the right operands of the
same products."""


OUT_STEPS = (("add", 0, 5, 5), ("add", 0, 1, 0), ("add", 5, 6, 6), ("add", 5, 4, 5), ("add", 5, 3, 1),
             ("subtract", 6, 2, 2), ("add", 6, 4, 3))
"""The recombination in place from slots M1, M2, M4, M3, M5, M6, M7: U2 = M1 + M6 → 5, C11 = M1 + M2 → 0,
U3 = U2 + M7 → 6, U4 = U2 + M5 → 5, C12 = U4 + M3 → 1, C21 = U3 − M4 → 2, C22 = U3 + M5 → 3."""


@functools.cache
def takes_out(xp: Any) -> bool:
    """Whether the namespace's einsum writes into a given array and takes a contraction order (``out=``,
    ``optimize=``; its ufuncs and matmul then take ``out=`` too): numpy's and flopscope's do, torch's does not."""
    return {"out", "optimize"} <= set(inspect.signature(xp.einsum).parameters)


def usable_levels(levels: int, *dims: int) -> int:
    """The most levels ≤ ``levels`` at which every dimension is divisible by 2^levels."""
    while levels and any(d % 2**levels for d in dims):
        levels -= 1
    return levels


def split_product(xp: Any, a: Any, parts: list, levels: int = 0, scales: list | None = None) -> list:
    """[A·diag(s_p)·X_p for each part], as one product of A with the parts side by side: X_p (k, m_p), or a stack
    (S, k, m_p) of S matrices (then the result is stacked too); s_p = ``scales[p]`` (k,) or None (no scaling).
    By ``levels`` Strassen levels where the namespace takes ``out=`` (fewer where a dimension is not divisible)."""
    scales = [None] * len(parts) if scales is None else scales
    levels = usable_levels(levels, *a.shape, *(part.shape[-1] for part in parts)) if takes_out(xp) else 0
    if levels == 0:
        scaled: dict = {}
        out = []
        for part, scale in zip(parts, scales, strict=True):
            left = a if scale is None else scaled.setdefault(id(scale), a * scale[None, :])
            out.append(left @ part)
        return out
    columns = sum(_stacked(part) * part.shape[-1] for part in parts)
    left = _loaded(xp, "split left", [(a, None)], levels, a.shape, swapped=False)
    right = _loaded(xp, "split right", list(zip(parts, scales, strict=True)), levels, (a.shape[1], columns),
                    swapped=True, grows_in_columns=True)
    result = _multiplied(xp, "split", left, right, levels, grows_in_columns=True)
    return _unloaded(xp, result, parts, levels)


def summed_product(xp: Any, pairs: list, levels: int = 0) -> Any:
    """Σ_p A_p B_pᵀ over ``pairs`` (A_p, B_p), each (n, k_p) and (m, k_p), or stacks (S, n, k_p) and (S, m, k_p)
    (Σ_s A_s B_sᵀ), as one product with the inner dimensions side by side; B_p read in place. By ``levels``
    Strassen levels where the namespace takes ``out=`` (fewer where a dimension is not divisible)."""
    n, m = pairs[0][0].shape[-2], pairs[0][1].shape[-2]
    levels = usable_levels(levels, n, m, *(a.shape[-1] for a, _ in pairs)) if takes_out(xp) else 0
    if levels == 0:
        total = None
        for a, b in pairs:
            value = a @ b.T if a.ndim == 2 else xp.einsum("sik,sjk->ij", a, b)
            total = value if total is None else total + value
        return total
    inner = sum(_stacked(a) * a.shape[-1] for a, _ in pairs)
    left = _loaded(xp, "summed left", [(a, None) for a, _ in pairs], levels, (n, inner), swapped=False,
                   grows_in_columns=True)
    right = _loaded(xp, "summed right", [(b, None) for _, b in pairs], levels, (inner, m), swapped=True,
                    transposed=True)
    result = _multiplied(xp, "summed", left, right, levels)
    return _unloaded(xp, result, [xp.empty((n, m), dtype=pairs[0][0].dtype)], levels)[0]


def product(xp: Any, a: Any, b: Any, levels: int = 0, transposed: bool = False) -> Any:
    """a @ b (``transposed``: a @ bᵀ, b read in place) by ``levels`` Strassen levels (``split_product``,
    ``summed_product``)."""
    return summed_product(xp, [(a, b)], levels) if transposed else split_product(xp, a, [b], levels)[0]


def _stacked(array: Any) -> int:
    """The number of matrices in a part: its leading stack axis, or 1."""
    return array.shape[0] if array.ndim == 3 else 1


def _block_axes(levels: int, stacked: bool, transposed: bool, swapped: bool) -> tuple[list, list]:
    """For a part stored as (S?, p, q) and reshaped to (S?, 2^L bits of p, p/2^L, 2^L bits of q, q/2^L): the axis
    order of its blocked view (per level the pair (row bit, column bit) of the logical matrix — the stored one, or
    its transpose — or (column bit, row bit) when ``swapped``, then rows, then columns within a block; the stack
    axis joins the q side, ahead of q's in-block axis) and the inverse order."""
    offset = int(stacked)
    p_bits = [offset + level for level in range(levels)]
    q_bits = [offset + levels + 1 + level for level in range(levels)]
    p_in, q_in = offset + levels, offset + 2 * levels + 1
    q_side = [0, q_in] if stacked else [q_in]
    row_bits, column_bits = (q_bits, p_bits) if transposed else (p_bits, q_bits)
    pairs = [bit for level in range(levels) for bit in ((column_bits[level], row_bits[level]) if swapped
                                                         else (row_bits[level], column_bits[level]))]
    order = pairs + (q_side + [p_in] if transposed else [p_in] + q_side)
    return order, [order.index(axis) for axis in range(len(order))]


def _blocked(xp: Any, array: Any, levels: int, transposed: bool, swapped: bool) -> Any:
    """The blocked view of a part (``_block_axes``): one reshape and a transposition."""
    *stack, p, q = array.shape
    size = 2**levels
    split = xp.reshape(array, (*stack, *(2,) * levels, p // size, *(2,) * levels, q // size))
    return xp.transpose(split, _block_axes(levels, bool(stack), transposed, swapped)[0])


def _scale_view(xp: Any, scale: Any, levels: int, stacked: bool) -> Any:
    """Row scales s (k,) of a right part (its stored rows, B's row bits) shaped to broadcast against its blocked
    view (``swapped``: (column bit, row bit) per level, then rows, then (stack,) columns)."""
    size = 2**levels
    split = xp.reshape(scale, (*(2,) * levels, scale.shape[0] // size))
    index = tuple(item for _ in range(levels) for item in (None, slice(None))) + (slice(None), None)
    return split[index + ((None,) if stacked else ())]


def _slot_views(array: Any, views: dict, levels: int) -> dict:
    """A scratch array's views, kept in ``views``: "slots", slots 0–3 of every level as (2, 2)*L + (rows,
    columns); "levels", per level its seven slot views (that level's slot, the outer levels whole, the inner ones at
    slots 0–3)."""
    if "slots" not in views:
        blocks = array[(slice(0, 4),) * levels]
        views["slots"] = blocks.reshape(tuple(d for _ in range(levels) for d in (2, 2)) + blocks.shape[-2:])
        views["levels"] = [[array[(slice(None),) * level + (slot,) + (slice(0, 4),) * (levels - level - 1)]
                            for slot in range(7)] for level in range(levels)]
    return views


def _loaded(xp: Any, role: str, parts: list, levels: int, shape: tuple, swapped: bool, transposed: bool = False,
            grows_in_columns: bool = False) -> Any:
    """The scratch array of ``role`` with the ``parts`` (array, row scale or None) loaded side by side (along the
    columns; ``transposed``: the parts are stored transposed and side by side along the rows) into slots 0–3 of
    every level, one operation a part; ``grows_in_columns``: its columns are the axis that grows from call to call
    (``workspace`` stores them first)."""
    size = 2**levels
    rows, columns = shape
    array, kept = workspace(xp, parts[0][0], role, (*(7,) * levels, rows // size, columns // size),
                            transposed=grows_in_columns)
    views = _slot_views(array, kept, levels)
    offset = 0
    for part, scale in parts:
        stack = part.shape[:-2]
        width = _stacked(part) * part.shape[-1] // size
        window = slice(offset, offset + width)
        target = views["slots"][(Ellipsis, window, slice(None)) if transposed else (Ellipsis, window)]
        if stack:  # the stack joins the in-block axis of the part's side
            in_block = part.shape[-1] // size
            target = xp.reshape(target, (*target.shape[:-2], *stack, in_block, target.shape[-1]) if transposed
                                else (*target.shape[:-1], *stack, in_block))
        source = _blocked(xp, part, levels, transposed, swapped)
        if scale is None:
            xp.copyto(target, source)
        else:
            xp.multiply(source, _scale_view(xp, scale, levels, bool(stack)), out=target)
        offset += width
    steps = RIGHT_STEPS if swapped else LEFT_STEPS
    for level in range(levels):
        _run(xp, steps, views["levels"][level])
    return array


def _multiplied(xp: Any, role: str, left: Any, right: Any, levels: int, grows_in_columns: bool = False) -> Any:
    """The 7^L block products, one batched matmul into the scratch array of ``role`` (``grows_in_columns``: as in
    ``_loaded``), recombined in place."""
    array, kept = workspace(xp, left, role + " products", (*left.shape[:-1], right.shape[-1]),
                            transposed=grows_in_columns)
    xp.matmul(left, right, out=array)
    views = _slot_views(array, kept, levels)
    for level in reversed(range(levels)):
        _run(xp, OUT_STEPS, views["levels"][level])
    return views["slots"]


def _unloaded(xp: Any, slots: Any, parts: list, levels: int) -> list:
    """The result's column ranges, one a part (of the parts' widths and stacks), each copied out into its own array
    of the part's stored shape (S?, n, m_p) with the result's n rows."""
    size = 2**levels
    rows = slots.shape[-2] * size
    out, offset = [], 0
    for part in parts:
        stack = part.shape[:-2]
        width = _stacked(part) * part.shape[-1] // size
        window = slots[..., offset: offset + width]
        if stack:
            window = xp.reshape(window, (*window.shape[:-1], *stack, part.shape[-1] // size))
        order, inverse = _block_axes(levels, bool(stack), False, False)
        blocked = xp.transpose(window, inverse)
        out.append(xp.reshape(blocked, (*stack, rows, part.shape[-1])))
        offset += width
    return out


def _run(xp: Any, steps: tuple, slots: list) -> None:
    """One level's additions in place (``LEFT_STEPS``, ``RIGHT_STEPS``, ``OUT_STEPS``)."""
    for operation, first, second, target in steps:
        if operation == "copy":
            xp.copyto(slots[target], slots[first])
        else:
            getattr(xp, operation)(slots[first], slots[second], out=slots[target])


def product_flops(n: int, k: int, m: int, levels: int = 0) -> int:
    """FLOPs of an (n × k)(k × m) product (``split_product``, ``summed_product``: k or m the parts' total) as flopscope
    bills it, an upper bound: 2nkm (7/8)^L for the block products at the usable levels L (``usable_levels``; 2nkm
    when none); loading each operand (a reshape and a copy, or a scaling, one FLOP an entry each) and reshaping its
    scratch array's slots (one an entry); per level ℓ = 1…L, with g = (7/4)^(ℓ−1): A's five operations on
    quarter blocks, 5g·nk/4, B's four, g·km, the recombination's seven, 7g·nm/4; the slots of the products'
    array reshaped (nm) and the result copied out (a reshape, nm, of a transposed view, billed once more)."""
    levels = usable_levels(levels, n, k, m)
    if levels == 0:
        return 2 * n * k * m
    growth = sum((7 / 4) ** level for level in range(levels))
    additions = growth * (5 * n * k / 4 + k * m + 7 * n * m / 4)
    loads = 3 * (n * k + k * m) + 3 * n * m
    return math.ceil(2 * n * k * m * (7 / 8) ** levels + additions + loads)
