"""Where compute runs: the GPU when there is one, the CPU otherwise (overridable).

State dicts always live in host memory (checkpoints stream from disk, and the results must be saved or cached
there). The compute-bound kernels (TIES' trim thresholds and fused merge, the top-m% sort of PERU-FFT and
Post-Pruning, dense task-vector spectra, and evaluation) move their inputs to the compute device and bring only
the result back. Memory-bound sums (averaging, Task Arithmetic) stay on the host: every byte has to leave host
memory either way, and one pass over it there is as fast as copying it to the GPU.
"""
from __future__ import annotations

import os
from typing import Union

import torch

from peru_core.errors import PeruError

DeviceLike = Union[str, torch.device, None]


def available_devices() -> list[str]:
    """Devices a user may pick, best first (``cuda`` only when CUDA is usable)."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def default_device() -> str:
    """``$PERU_DEVICE`` if set, else ``cuda`` when available, else ``cpu``."""
    forced = os.environ.get("PERU_DEVICE")
    if forced:
        return forced
    return available_devices()[0]


def resolve_device(device: DeviceLike = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks :func:`default_device`. A name torch does not know, or
    ``cuda`` on a machine without a usable GPU, is a one-sentence PeruError."""
    if isinstance(device, torch.device):
        return device
    name = device if device is not None else default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise PeruError(f"Unknown device {name!r}; use one of: {', '.join(available_devices())}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PeruError(f"Device {name!r} was asked for, but this machine has no usable CUDA GPU; use cpu "
                        "(or unset PERU_DEVICE).")
    if dev.type not in ("cpu", "cuda"):
        raise PeruError(f"Device {name!r} is not supported; use one of: {', '.join(available_devices())}.")
    return dev
