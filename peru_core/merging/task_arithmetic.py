"""Task Arithmetic: ``theta_0 + lam * sum_t (theta_t - theta_0)``.

Paper: Ilharco et al., "Editing models with task arithmetic", https://arxiv.org/abs/2212.04089 ; the merge PERU-FFT
builds on by default (https://arxiv.org/abs/2310.01886).
"""
from __future__ import annotations

from typing import Optional, Sequence

from peru_core.device import DeviceLike
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys, weighted_sum
from peru_core.types import Progress, StateDict


def task_arithmetic_merge(base: StateDict, finetuned: Sequence[StateDict], lam: float, *,
                          on_progress: Progress = None) -> StateDict:
    """``theta_0 + lam * sum_t v_t`` over the fine-tuned keys.

    Memory-bound, so computed as ``(1 - lam T) theta_0 + lam sum_t theta_t`` in one chunked pass with a
    preallocated accumulator and in-place ``add_`` (no list of task vectors, no ``sum(list)`` temporaries). The
    rounding stays at the output's own float32 ulp: the sum of T weights is exact to a few ulp of the weights.
    """
    keys = tuned_keys(base, finetuned)
    return weighted_sum(base, finetuned, 1.0 - lam * len(finetuned), lam, keys, on_progress=on_progress,
                        message=f"task arithmetic over {len(finetuned)} tasks")


@merge_method("task_arithmetic", label="Task Arithmetic", paper="https://arxiv.org/abs/2212.04089",
              params=(Param("lam", 0.3, 0.0, 2.0, "scale of the summed task vectors", step=0.05, label="Scaling λ"),),
              summary="Add the scaled sum of the task vectors to the base.")
def task_arithmetic(base: StateDict, finetuned: Sequence[StateDict], *, lam: float,
                    context: Optional[MergeContext] = None, on_progress: Progress = None,
                    device: DeviceLike = None) -> StateDict:
    """Add the scaled sum of the task vectors to the base (memory-bound: one pass in host memory whatever
    ``device`` is)."""
    return task_arithmetic_merge(base, finetuned, lam, on_progress=on_progress)
