"""Counting floating-point operations of the torch operations actually run (docs/method.md §9).

Rules, per aten operation:
- matrix products (mm, bmm, mv, dot, and einsum, which torch lowers to them): 2·m·k·n;
  addmm / baddbmm / addmv add one FLOP per output entry for the added term;
- elementwise arithmetic and transcendental functions (add, sub, mul, div, pow, neg, abs, sqrt, exp,
  log, erf, tanh, sigmoid, relu, ...): one FLOP per output entry;
- sum and prod: (r - 1) per output entry, i.e. input size - output size; mean: r per output entry;
- everything else (views, copies, comparisons, clamps, indexing, random-number generation): 0.

Besides this raw count, ``FlopCounter.discounted`` applies docs/method.md §9's symmetric-storage discount the way a
symmetric tensor kernel would: an operation whose output is symmetric in its last d ≥ 2 axes (all of size n)
is charged only for the C(n+d−1, d) distinct entries, i.e. its raw FLOPs times
slice_factor = C(n+d−1, d) / n^d (≈ 1/d! for large n). Symmetry is detected on the output's values (at
random probes; see ``symmetric_axes``), so
contractions that torch reshapes into matrix products with non-symmetric intermediates are not discounted
(the reference's contract_factor discounts those too): this discount is smaller than the reference's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from math import comb

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ELEMENTWISE = frozenset(
    "add sub rsub mul div true_divide pow neg abs sqrt rsqrt reciprocal exp expm1 log log1p sin cos tanh sigmoid "
    "relu erf erfc erfinv square addcmul addcdiv lerp".split()
)
_REDUCTIONS = frozenset(["sum", "prod"])


def _matmul_flops(name: str, args: tuple, out: torch.Tensor) -> int:
    """2·m·k·n for the product, plus one per output entry for the added term of the add* forms."""
    is_plain_product = name in ("mm", "bmm", "mv", "dot")
    left_factor = args[0] if is_plain_product else args[1]
    added = 0 if is_plain_product else out.numel()
    return 2 * out.numel() * left_factor.shape[-1] + added


def _operation_flops(name: str, args: tuple, out: object) -> int:
    """FLOPs of one aten operation under the module's rules (0 for anything not listed)."""
    if not isinstance(out, torch.Tensor):
        return 0
    if name in ("mm", "bmm", "mv", "dot", "addmm", "baddbmm", "addmv"):
        return _matmul_flops(name, args, out)
    if name in _ELEMENTWISE:
        return out.numel()
    if name in _REDUCTIONS and isinstance(args[0], torch.Tensor):
        return args[0].numel() - out.numel()
    if name == "mean" and isinstance(args[0], torch.Tensor):
        return args[0].numel()
    return 0


SYMMETRY_PROBES = 256


def symmetric_axes(tensor: torch.Tensor) -> int:
    """The largest d ≥ 2 such that ``tensor`` is symmetric under permuting its last d axes (all of one size
    n ≥ 2), up to round-off; 0 if there is none.

    The check is randomised but deterministic: each adjacent transposition of the d axes is compared on
    SYMMETRY_PROBES index tuples drawn from a fixed seed (a full comparison would cost more than the
    operation being counted).
    """
    if not tensor.is_floating_point() or tensor.dim() < 2 or tensor.shape[-1] < 2:
        return 0
    n = tensor.shape[-1]
    equal = 0
    while equal < tensor.dim() and tensor.shape[-1 - equal] == n:
        equal += 1
    generator = torch.Generator().manual_seed(0)
    for d in range(equal, 1, -1):
        flat = tensor.detach().reshape(-1, *([n] * d))
        batch = torch.randint(0, flat.shape[0], (SYMMETRY_PROBES,), generator=generator)
        index = torch.randint(0, n, (d, SYMMETRY_PROBES), generator=generator)
        values = flat[(batch, *index)]
        tolerance = (1e-9 if tensor.dtype == torch.float64 else 1e-5) * float(values.abs().max())
        if all(bool(((values - flat[(batch, *swapped(index, a))]).abs() <= tolerance).all()) for a in range(d - 1)):
            return d
    return 0


def swapped(index: torch.Tensor, axis: int) -> torch.Tensor:
    """``index`` (d × probes) with rows ``axis`` and ``axis`` + 1 exchanged."""
    order = list(range(index.shape[0]))
    order[axis], order[axis + 1] = order[axis + 1], order[axis]
    return index[order]


def slice_factor(n: int, d: int) -> float:
    """Distinct entries of a symmetric d-tensor over n indices, C(n+d−1, d), over its n^d stored entries."""
    return comb(n + d - 1, d) / n**d


class FlopCounter(TorchDispatchMode):
    """Context manager that counts the FLOPs of every torch operation run inside it (``total``), and with
    ``discount=True`` also the symmetric-storage-discounted count (``discounted``, see the module docstring).

    >>> with FlopCounter() as counter:
    ...     y = torch.ones(4, 3) @ torch.ones(3, 2)
    >>> counter.total
    48
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Let torch leave ``__torch_dispatch__`` undecorated: its dynamo guard would import torch._dynamo
        (1–2 s) on the first counted operation, and nothing counted here is compiled."""
        return False

    def __init__(self, discount: bool = False) -> None:
        super().__init__()
        self.by_operation: Counter[str] = Counter()
        self.discount = discount
        self.discounted = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> object:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        flops = _operation_flops(name, args, out)
        if flops:
            self.by_operation[name] += flops
            if self.discount:
                d = symmetric_axes(out)
                self.discounted += flops * (slice_factor(out.shape[-1], d) if d else 1.0)
        return out
