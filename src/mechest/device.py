"""Where the arithmetic runs: resolving ``device="cpu"|"cuda"|"auto"`` and timing work on it.

CUDA kernels run asynchronously, so a wall-clock time taken on a CUDA device is only meaningful after
``synchronize(device)``: every timed section in mechest ends with it.
"""

from __future__ import annotations

import torch

from mechest.errors import MechestError

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: torch.device | str | None, default: torch.device | str = "cpu") -> torch.device:
    """A torch device from ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), ``"auto"`` (CUDA when available) or None
    (``default``).

    Asking for CUDA where torch sees no CUDA device is a MechestError, not a silent fall-back to the CPU.
    """
    if device is None:
        return torch.device(default)
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise MechestError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise MechestError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise MechestError(f"device {device!r} asked for, but torch sees no CUDA device on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise MechestError(f"device {device!r} asked for, "
                               f"but this machine has {torch.cuda.device_count()} CUDA devices")
    return resolved


def synchronize(device: torch.device) -> None:
    """Wait until every kernel queued on ``device`` has finished (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """A readable name: the GPU's model on CUDA, ``cpu`` otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def total_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes; None on the CPU (no fixed budget to size work by)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory
