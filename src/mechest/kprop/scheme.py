"""A propagation scheme: order K, variant and representation of the top cumulant, as one validated value.

Every caller (the Python API, the CLI, bench, tail, distill, training) builds a ``Scheme`` once from what the user
passed and hands that on; ``SCHEMES`` lists every supported one, which is what help texts, bench's configurations
and error messages read.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechest.errors import MechestError

MAX_ORDER = 4
VARIANTS = ("simple", "augment")
ORDER_ONE_VARIANTS = ("isotropic",)
"""Variants that exist at K = 1 only: "isotropic" (the cheapest estimate; docs/method.md)."""
FACTORED_ONLY_VARIANTS = ("core", "closure")
"""Variants that exist in factored form at K = 3 only: "core" (K = 3 simple with κ_4 kept with an n×n core,
docs/method.md §7.8) and "closure" (that core's off-diagonal modelled as a multiple of the covariance's, §7.9)."""
ALL_VARIANTS = VARIANTS + ORDER_ONE_VARIANTS + FACTORED_ONLY_VARIANTS
FACTORED_VARIANTS = {3: VARIANTS + FACTORED_ONLY_VARIANTS, 4: ("simple",)}
"""Orders whose top cumulant can be carried in factored form, and in which variants."""


@dataclass(frozen=True)
class Scheme:
    """Order K (1..MAX_ORDER), variant ("simple", "augment"; "isotropic" at K = 1 only; "core" and "closure" at
    factored K = 3 only) and whether the order-K cumulant is carried in factored form (K = 3 simple, augment, core
    and closure, K = 4 simple). At K = 1 simple and augment coincide (both are mean field)."""

    order: int
    variant: str = "simple"
    factored: bool = False

    def __post_init__(self) -> None:
        if self.order == 1 and self.variant == "augment":
            object.__setattr__(self, "variant", "simple")  # the same propagation: one value for it
        problem = unsupported_reason(self.order, self.variant, self.factored)
        if problem:
            passed = f"order={self.order!r}, variant={self.variant!r}, factored={self.factored!r}"
            raise MechestError(f"unsupported kprop scheme ({passed}): {problem}; supported: {supported_list()}")

    def __str__(self) -> str:
        return f"K={self.order} {self.variant}" + (" factored" if self.factored else "")

    def to_dict(self) -> dict:
        """The JSON form: {"order": K, "variant": ..., "factored": ...}."""
        return {"order": self.order, "variant": self.variant, "factored": self.factored}


def unsupported_reason(order: object, variant: object, factored: object) -> str | None:
    """Why (order, variant, factored) is not a scheme, or None if it is."""
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= MAX_ORDER:
        return f"the order must be an integer from 1 to {MAX_ORDER}"
    if variant not in ALL_VARIANTS:
        return f"the variant must be one of {', '.join(ALL_VARIANTS)}"
    if not isinstance(factored, bool):
        return "factored must be True or False"
    if variant in ORDER_ONE_VARIANTS and order != 1:
        return f"variant {variant!r} exists at order 1 only"
    if variant in FACTORED_ONLY_VARIANTS and not (factored and order == 3):
        return f"variant {variant!r} exists at order 3, factored, only"
    if factored and variant not in FACTORED_VARIANTS.get(order, ()):
        return "factored form exists for K = 3 (simple, augment, core, closure) and K = 4 simple only"
    return None


def all_schemes() -> tuple[Scheme, ...]:
    """Every supported scheme, cheapest kinds first within each order (K = 1 augment is K = 1 simple)."""
    out: list[Scheme] = []
    for order in range(1, MAX_ORDER + 1):
        for variant in ALL_VARIANTS:
            for factored in (False, True):
                if unsupported_reason(order, variant, factored) is None and (order, variant) != (1, "augment"):
                    out.append(Scheme(order, variant, factored))
    return tuple(out)


def supported_list() -> str:
    """The supported schemes in one line."""
    return ", ".join(str(scheme) for scheme in SCHEMES)


SCHEMES: tuple[Scheme, ...] = all_schemes()
