"""Shared type aliases."""
from __future__ import annotations

from typing import Callable, Optional

import torch

StateDict = dict[str, torch.Tensor]
"""A flat mapping of parameter names to tensors (open_clip naming)."""

Progress = Optional[Callable[[float, str], None]]
"""Optional ``on_progress(fraction in [0, 1], message)`` callback for long-running work."""


def report(on_progress: Progress, fraction: float, message: str) -> None:
    """Call ``on_progress`` if given; fraction is clamped to [0, 1]."""
    if on_progress is not None:
        on_progress(min(1.0, max(0.0, float(fraction))), message)
