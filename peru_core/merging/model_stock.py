"""Model Stock: per tensor, interpolate between the average fine-tune and the base by the tasks' angle.

Paper: Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV 2024,
https://arxiv.org/abs/2403.19522 . Follows FusionBench (``fusion_bench/method/model_stock/model_stock.py``):

1. per tensor, the angle between every pair of task vectors (``cos = <a, b> / (|a| |b| + 1e-8)``), averaged in
   degrees over the pairs;
2. ``t = T cos / ((T - 1) cos + 1 + 1e-8)``;
3. ``t * mean_t theta_t + (1 - t) * theta_0``.

With one fine-tune there is no angle: the angle is taken as 0 (t = 1), so the result is that fine-tune (FusionBench
refuses fewer than two). A zero task vector has cosine 0, i.e. 90 degrees. The T x T Gram matrix of each tensor is
one matrix product on ``device``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.merging._common import key_task_vectors, to_host
from peru_core.merging.registry import MergeContext, merge_method
from peru_core.types import Progress, StateDict

EPS = 1e-8  # FusionBench's


def stock_ratio(tvs: Sequence[torch.Tensor]) -> float:
    """The interpolation ratio t of one tensor from its T task vectors."""
    n = len(tvs)
    if n < 2:
        return 1.0
    flat = torch.stack([tv.reshape(-1) for tv in tvs]).float()
    gram = flat @ flat.T
    sq = gram.diagonal().double().cpu()
    g = gram.double().cpu()
    angles = [math.degrees(math.acos(max(-1.0, min(1.0, float(g[i, j]) / (math.sqrt(sq[i] * sq[j]) + EPS)))))
              for i in range(n) for j in range(i + 1, n)]
    cos = math.cos(math.radians(sum(angles) / len(angles)))
    return n * cos / ((n - 1) * cos + 1 + EPS)


def model_stock_merge(base: StateDict, finetuned: Sequence[StateDict], *, on_progress: Progress = None,
                      device: DeviceLike = None) -> StateDict:
    """Model Stock of ``finetuned`` onto ``base``, Gram matrices on ``device``; the result is in host memory."""
    out: StateDict = {}
    for key, b, tvs in key_task_vectors(base, finetuned, resolve_device(device), on_progress,
                                        "Model Stock: angles per tensor"):
        t = stock_ratio(tvs)
        mean = b + torch.stack(tvs).mean(0)
        out[key] = to_host(mean * t + b * (1.0 - t), base[key])
    return out


@merge_method("model_stock", label="Model Stock", paper="https://arxiv.org/abs/2403.19522",
              summary="Per tensor, move from the base towards the mean fine-tune by the tasks' angle.")
def model_stock(base: StateDict, finetuned: Sequence[StateDict], *, context: Optional[MergeContext] = None,
                on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Per tensor, move from the base towards the mean fine-tune by the tasks' angle (no parameters)."""
    return model_stock_merge(base, finetuned, on_progress=on_progress, device=device)
