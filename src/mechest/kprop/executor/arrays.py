"""The executor's kept arrays: constants (``constant``: made once per namespace, device, dtype and name),
scratch arrays (``buffer``, ``workspace``: reused until ``release_buffers``) and the off-diagonal mask
(``off_diagonal``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_CONSTANTS: dict = {}
_BUFFERS: dict = {}


def array_key(xp: Any, like: Any, name: Any) -> tuple:
    """What identifies an array the executor keeps: its namespace, ``like``'s device and dtype, and ``name``."""
    return id(xp), str(getattr(like, "device", "")), str(like.dtype), name


def constant(xp: Any, like: Any, name: Any, values: Callable[[], Any]) -> Any:
    """``xp.asarray(values())`` in ``like``'s dtype and on its device, made once per (namespace, device, dtype,
    ``name``): the executor's constant coefficient arrays (``name`` must determine ``values``)."""
    key = array_key(xp, like, name)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = xp.asarray(values(), dtype=like.dtype)
    return _CONSTANTS[key]


def buffer(xp: Any, like: Any, role: str, shape: tuple) -> Any:
    """A scratch array of ``shape`` in ``like``'s dtype, made once per (namespace, device, dtype, role, shape) and
    reused by every later caller of that shape until ``release_buffers``: Strassen's block combinations and block
    products are large and short-lived, and freeing them at every product costs far more time outside the FLOP
    counter's timers than the few operations that fill them (phase 2's residual-time gate)."""
    key = array_key(xp, like, (role, shape))
    if key not in _BUFFERS:
        _BUFFERS[key] = xp.empty(shape, dtype=like.dtype)
    return _BUFFERS[key]


@dataclass
class Workspace:
    """A scratch array and the views of it its user keeps (``workspace``)."""

    array: Any
    views: dict = field(default_factory=dict)


_WORKSPACES: dict = {}


def workspace(xp: Any, like: Any, role: str, shape: tuple) -> Workspace:
    """A scratch array of ``shape`` in ``like``'s dtype with its kept views, one per (namespace, device, dtype,
    ``role``): a call with another shape replaces it (Strassen's block combinations, several times the size of their
    operands, whose shapes change from layer to layer), so that at most one per role is alive, until
    ``release_buffers``."""
    key = array_key(xp, like, role)
    space = _WORKSPACES.get(key)
    if space is None or tuple(space.array.shape) != tuple(shape):
        _WORKSPACES.pop(key, None)  # freed before the next is made
        space = _WORKSPACES[key] = Workspace(xp.empty(shape, dtype=like.dtype))
    return space


def release_buffers() -> None:
    """Drop the scratch arrays of ``buffer`` and ``workspace`` (``planned`` does when it ends)."""
    _BUFFERS.clear()
    _WORKSPACES.clear()


def off_diagonal(xp: Any, matrix: Any) -> Any:
    """The matrix (or each of a stack) with its diagonal set to zero (the (1,1) slice of a symmetric 2-tensor):
    times the mask 1{i ≠ j}, a ``constant`` made by a comparison (which no FLOP counter bills, so that a first call
    costs what every later one does) and stored in the matrix's dtype (a boolean mask is converted at every use)."""
    width = matrix.shape[-1]
    return matrix * constant(xp, matrix, ("off-diagonal", width), lambda: xp.eye(width, dtype=matrix.dtype) == 0)
