"""Simple averaging: ``theta_0 + mean_t v_t``, i.e. the mean of the fine-tuned weights (model soups).

Paper: Wortsman et al., "Model soups", https://arxiv.org/abs/2203.05482 ; used as a baseline in PERU
(https://arxiv.org/abs/2310.01886).
"""
from __future__ import annotations

from typing import Optional, Sequence

from peru_core.device import DeviceLike
from peru_core.merging.registry import MergeContext, merge_method
from peru_core.statedict import tuned_keys, weighted_sum
from peru_core.types import Progress, StateDict


def average_merge(base: StateDict, finetuned: Sequence[StateDict], *, on_progress: Progress = None) -> StateDict:
    """``mean_t theta_t`` over the fine-tuned keys (equal to ``theta_0 + mean_t (theta_t - theta_0)``)."""
    keys = tuned_keys(base, finetuned)
    return weighted_sum(base, finetuned, 0.0, 1.0 / len(finetuned), keys, on_progress=on_progress,
                        message="averaging")


@merge_method("average", label="Simple average", paper="https://arxiv.org/abs/2203.05482",
              summary="Mean of the fine-tuned weights.")
def average(base: StateDict, finetuned: Sequence[StateDict], *, context: Optional[MergeContext] = None,
            on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Mean of the fine-tuned weights (memory-bound: one pass in host memory whatever ``device`` is)."""
    return average_merge(base, finetuned, on_progress=on_progress)
