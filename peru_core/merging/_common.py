"""Shared steps of the per-tensor merges (TSV-M, Iso-C/CTS, Model Stock, MagMax, Breadcrumbs).

Each of those methods works one tensor at a time: it reads the T task vectors of one key (in the work dtype, on the
compute device), computes the merged task vector of that key, and writes ``theta_0 + merged`` back in the base's
dtype, in host memory. The inputs stay in host memory; only one key's tensors are on the device at a time.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch

from peru_core.statedict import tuned_keys, work_dtype
from peru_core.types import Progress, report


def key_task_vectors(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]],
                     device: torch.device, on_progress: Progress = None, message: str = "merging"
                     ) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
    """``(key, theta_0, [tau_1 .. tau_T])`` per tuned key, in the work dtype on ``device`` (progress per key)."""
    keys = tuned_keys(base, finetuned)
    for i, key in enumerate(keys):
        wd = work_dtype(base[key].dtype)
        b = base[key].to(device=device, dtype=wd)
        yield key, b, [sd[key].to(device=device, dtype=wd) - b for sd in finetuned]
        report(on_progress, (i + 1) / len(keys), message)


def to_host(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` in host memory with ``like``'s dtype and shape."""
    return x.reshape(like.shape).to("cpu", like.dtype)
