"""MagMax: per entry, the task-vector value of largest magnitude, ``theta_0 + lam * tau_max``.

Paper: Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual Learning", ECCV 2024,
https://arxiv.org/abs/2407.06322 . Ties go to the later task (``>=``), as in the authors' code and FusionBench
(``fusion_bench/method/magmax/magmax.py``). Memory-bound: one pass in host memory whatever ``device`` is.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike
from peru_core.merging._common import key_task_vectors, to_host
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.types import Progress, StateDict


def magmax_merge(base: StateDict, finetuned: Sequence[StateDict], lam: float, *,
                 on_progress: Progress = None) -> StateDict:
    """``theta_0 + lam * tau_max`` with ``tau_max[j] = tau_t*[j]``, ``t* = argmax_t |tau_t[j]|`` (ties: later t)."""
    out: StateDict = {}
    cpu = torch.device("cpu")
    for key, b, tvs in key_task_vectors(base, finetuned, cpu, on_progress, "MagMax: largest magnitude per entry"):
        best = tvs[0]
        for tv in tvs[1:]:
            best = torch.where(tv.abs() >= best.abs(), tv, best)  # '>=': the later task wins a tie
        out[key] = to_host(b + lam * best, base[key])
    return out


@merge_method("magmax", label="MagMax", paper="https://arxiv.org/abs/2407.06322",
              params=(Param("lam", 0.5, 0.0, 2.0, "scale of the selected task vector (the authors use 0.5)",
                            step=0.05, label="Scaling λ"),),
              summary="Per entry, keep the task-vector value of largest magnitude.")
def magmax(base: StateDict, finetuned: Sequence[StateDict], *, lam: float, context: Optional[MergeContext] = None,
           on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Per entry, keep the task-vector value of largest magnitude (memory-bound: host memory)."""
    return magmax_merge(base, finetuned, lam, on_progress=on_progress)
