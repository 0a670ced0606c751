"""Simple averaging: ``theta_0 + mean_t v_t``, i.e. the mean of the fine-tuned weights (model soups).

Paper: Wortsman et al., "Model soups", https://arxiv.org/abs/2203.05482 ; used as a baseline in PERU
(https://arxiv.org/abs/2310.01886).
"""
from __future__ import annotations

from typing import Optional, Sequence

from peru_core.merging.registry import MergeContext, merge_method
from peru_core.statedict import tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report


def average_merge(base: StateDict, finetuned: Sequence[StateDict], *, on_progress: Progress = None) -> StateDict:
    """``mean_t theta_t`` over the fine-tuned keys (equal to ``theta_0 + mean_t (theta_t - theta_0)``)."""
    keys = tuned_keys(base, finetuned)
    out: StateDict = {}
    for i, k in enumerate(keys):
        acc = finetuned[0][k].to(work_dtype(base[k].dtype), copy=True)  # preallocated accumulator, in-place adds
        for sd in finetuned[1:]:
            acc.add_(sd[k])
        out[k] = acc.div_(len(finetuned)).to(base[k].dtype)
        report(on_progress, (i + 1) / len(keys), "averaging")
    return out


@merge_method("average", label="Simple average", paper="https://arxiv.org/abs/2203.05482",
              summary="Mean of the fine-tuned weights.")
def average(base: StateDict, finetuned: Sequence[StateDict], *, context: Optional[MergeContext] = None,
            on_progress: Progress = None) -> StateDict:
    """Mean of the fine-tuned weights."""
    return average_merge(base, finetuned, on_progress=on_progress)
