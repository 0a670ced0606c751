"""Task Arithmetic: ``theta_0 + lam * sum_t (theta_t - theta_0)``.

Paper: Ilharco et al., "Editing models with task arithmetic", https://arxiv.org/abs/2212.04089 ; the merge PERU-FFT
builds on by default (https://arxiv.org/abs/2310.01886).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report


def task_arithmetic_merge(base: StateDict, finetuned: Sequence[StateDict], lam: float, *,
                          on_progress: Progress = None) -> StateDict:
    """``theta_0 + lam * sum_t v_t`` over the fine-tuned keys.

    Memory-bound, so it touches each input once per tensor: one preallocated accumulator per tensor and in-place
    ``add_``/``sub_`` (no list of task vectors, no ``sum(list)`` temporaries).
    """
    keys = tuned_keys(base, finetuned)
    n = len(finetuned)
    out: StateDict = {}
    for i, k in enumerate(keys):
        wd = work_dtype(base[k].dtype)
        b = base[k].to(wd)
        # sum_t (theta_t - theta_0), accumulated as differences so small updates keep their precision
        acc = torch.sub(finetuned[0][k].to(wd), b)
        for sd in finetuned[1:]:
            acc.add_(sd[k]).sub_(b)
        out[k] = acc.mul_(lam).add_(b).to(base[k].dtype)
        report(on_progress, (i + 1) / len(keys), f"task arithmetic over {n} tasks")
    return out


@merge_method("task_arithmetic", label="Task Arithmetic", paper="https://arxiv.org/abs/2212.04089",
              params=(Param("lam", 0.3, 0.0, 2.0, "scale of the summed task vectors", step=0.05),),
              summary="Add the scaled sum of the task vectors to the base.")
def task_arithmetic(base: StateDict, finetuned: Sequence[StateDict], *, lam: float,
                    context: Optional[MergeContext] = None, on_progress: Progress = None) -> StateDict:
    """Add the scaled sum of the task vectors to the base."""
    return task_arithmetic_merge(base, finetuned, lam, on_progress=on_progress)
