"""The executor's array namespaces: torch (autograd, any device) and numpy, and an MLP as the executor's Layers."""

from __future__ import annotations

from typing import Any

import torch

from mechest.kprop.executor import Backend, Layers
from mechest.math.wick import wick_table
from mechest.mlp import MLP


class TorchNamespace:
    """torch as the executor's ``xp``, its constants (``asarray``, ``eye``, ``zeros``) made on one device."""

    __name__ = "torch"

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def asarray(self, values: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device)

    def eye(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.eye(n, dtype=dtype, device=self.device)

    def zeros(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(n, dtype=dtype, device=self.device)


_NAMESPACES: dict[str, TorchNamespace] = {}


def torch_wick(activation: str, mean: torch.Tensor, var: torch.Tensor, k_max: int, p_max: int) -> torch.Tensor:
    """mechest.math.wick's table for every supported activation (closed forms or Gauss–Hermite quadrature; fewer FLOPs
    than the executor's einsum form of ReLU's)."""
    return wick_table(activation, mean, var, k_max, p_max)


def torch_backend(device: torch.device | str) -> Backend:
    """The executor on torch tensors of ``device``: differentiable, float32 or float64, CPU or CUDA."""
    key = str(torch.device(device))
    if key not in _NAMESPACES:
        _NAMESPACES[key] = TorchNamespace(torch.device(device))
    return Backend(_NAMESPACES[key], torch.special.ndtr, torch_wick)


def layers_of(net: MLP) -> Layers:
    """``net``'s hidden layers and output map as the executor reads them."""
    return Layers(net.weights, net.biases, net.activations)
