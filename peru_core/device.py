"""Where compute runs: the GPU when there is one, the CPU otherwise (overridable)."""
from __future__ import annotations

import os

import torch


def available_devices() -> list[str]:
    """Devices a user may pick, best first (``cuda`` only when CUDA is usable)."""
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def default_device() -> str:
    """``$PERU_DEVICE`` if set, else ``cuda`` when available, else ``cpu``."""
    forced = os.environ.get("PERU_DEVICE")
    if forced:
        return forced
    return available_devices()[0]
