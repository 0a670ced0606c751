"""Fisher merging: per entry, ``sum_t F_t theta_t / sum_t F_t`` with diagonal Fisher ``F_t`` of model t on task t.

Paper: Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", https://arxiv.org/abs/2111.09832 ; a
baseline of PERU (https://arxiv.org/abs/2310.01886). The Fisher diagonals come from the zoo's validation images
(``MergeContext.fisher``; see peru_core/zoo/context.py for the estimator).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from peru_core.device import DeviceLike
from peru_core.errors import PeruError
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report

SAMPLES = Param("samples", 256, 16, 1024, "validation images per task for the statistics", step=16, integer=True,
                label="Validation samples per task", unit="images")


def fisher_merge(finetuned: Sequence[StateDict], fishers: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """``sum_t F_t theta_t / sum_t F_t`` entry-wise; where every ``F_t`` is 0 the plain mean of the ``theta_t``.

    Tensors without a Fisher (none was computed for them) are averaged.
    """
    if len(fishers) != len(finetuned):
        raise PeruError(f"Fisher merging got {len(fishers)} Fisher diagonals for {len(finetuned)} models; give one per model.")
    out: StateDict = {}
    for k, ref in finetuned[0].items():
        dt = work_dtype(ref.dtype)
        thetas = [sd[k].to(dt) for sd in finetuned]
        mean = torch.stack(thetas).mean(0)
        if not all(k in f for f in fishers):
            out[k] = mean.to(ref.dtype)
            continue
        num = torch.zeros_like(mean)
        den = torch.zeros_like(mean)
        for theta, f in zip(thetas, fishers):
            w = f[k].to(dt)
            if w.shape != theta.shape:
                raise PeruError(f"The Fisher of {k!r} has shape {tuple(w.shape)}, not {tuple(theta.shape)}.")
            num.add_(w * theta)
            den.add_(w)
        out[k] = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), mean).to(ref.dtype)
    return out


@merge_method("fisher", label="Fisher merging", paper="https://arxiv.org/abs/2111.09832", params=(SAMPLES,),
              needs=("fisher",), summary="Entry-wise average weighted by each model's diagonal Fisher information.")
def fisher(base: StateDict, finetuned: Sequence[StateDict], *, samples: int, context: Optional[MergeContext] = None,
           on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Entry-wise average weighted by each model's diagonal Fisher information (the Fishers are computed on the
    context's device; the weighted average is one memory-bound pass in host memory)."""
    tuned_keys(base, finetuned)
    fishers = []
    for t, sd in enumerate(finetuned):
        report(on_progress, t / (len(finetuned) + 1), f"Fisher of task {t + 1}/{len(finetuned)}")
        fishers.append(context.fisher(t, sd, samples))
    merged = fisher_merge(finetuned, fishers)
    report(on_progress, 1.0, "Fisher merge done")
    return merged
