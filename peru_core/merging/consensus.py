"""Consensus merging: keep the entries of the Task Arithmetic sum that at least k tasks' TALL masks select.

Paper: Wang et al., "Localizing Task Information for Improved Model Merging and Compression", ICML 2024,
https://arxiv.org/abs/2405.07813 . Follows the authors' code as FusionBench carries it
(``fusion_bench/method/tall_mask/utils.py``, ``generate_task_masks`` and ``construct_consensus_mask``):

1. the multi-task vector ``tau = sum_t tau_t``;
2. task t's TALL mask: ``|theta_0 - theta_t| > lambda_mask |theta_0 + tau - theta_t|`` (strict);
3. the consensus mask: entries selected by at least ``k`` tasks (k = 2 drops both "selfish" and "catastrophic"
   weights; k = 0 is Task Arithmetic);
4. ``theta_0 + lam * (tau * mask)``.

The authors pick ``lambda_mask`` per task on validation data; here one value serves every task (data-free).
Memory-bound: one pass in host memory whatever ``device`` is.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report


def consensus_merge(base: StateDict, finetuned: Sequence[StateDict], lam: float, mask_lambda: float, k: int, *,
                    on_progress: Progress = None) -> StateDict:
    """Consensus Task Arithmetic of ``finetuned`` onto ``base``; the result is in host memory."""
    keys = tuned_keys(base, finetuned)
    out: StateDict = {}
    for i, key in enumerate(keys):
        wd = work_dtype(base[key].dtype)
        b = base[key].to(wd)
        fts = [sd[key].to(wd) for sd in finetuned]
        tau = torch.stack([f - b for f in fts]).sum(0)  # as the reference sums its stacked task vectors
        multi = b + tau
        count = torch.zeros_like(b)
        for f in fts:  # TALL mask of each task, counted
            count += ((b - f).abs() > (multi - f).abs() * mask_lambda).to(wd)
        out[key] = (b + lam * (tau * (count >= k))).to(base[key].dtype)
        report(on_progress, (i + 1) / len(keys), "Consensus: TALL masks and their consensus")
    return out


@merge_method("consensus", label="Consensus (Task Arithmetic)", paper="https://arxiv.org/abs/2405.07813",
              params=(Param("lam", 0.3, 0.0, 2.0, "scale of the masked task-vector sum", step=0.05, label="Scaling λ"),
                      Param("mask_lambda", 0.4, 0.0, 2.0, "TALL-mask threshold: task t selects an entry when its "
                            "own change exceeds this times its distance to the multi-task model (the authors try "
                            "0.2-0.6)", step=0.05, label="Mask λ"),
                      Param("k", 2, 0, 20, "entries kept only where at least this many tasks' masks select them",
                            step=1, integer=True, label="Min. tasks k", unit="tasks")),
              summary="Keep the Task Arithmetic entries that at least k tasks' TALL masks select.")
def consensus(base: StateDict, finetuned: Sequence[StateDict], *, lam: float, mask_lambda: float, k: int,
              context: Optional[MergeContext] = None, on_progress: Progress = None,
              device: DeviceLike = None) -> StateDict:
    """Keep the Task Arithmetic entries that at least k tasks' TALL masks select (host memory)."""
    return consensus_merge(base, finetuned, lam, mask_lambda, k, on_progress=on_progress)
