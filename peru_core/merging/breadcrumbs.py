"""Model Breadcrumbs: per tensor, drop each task vector's largest outliers and its small entries, then add up.

Paper: Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", ECCV 2024,
https://arxiv.org/abs/2312.06795 . Follows mergekit (``mergekit/sparsify.py::magnitude_outliers`` under the
``breadcrumbs`` method of ``mergekit/merge_methods/registry.py``): per tensor of n entries, ``n_keep = int(keep n)``
and ``n_top = int(top n)`` (if ``n_keep + n_top > n``, ``n_top`` shrinks); the ``n_top`` largest magnitudes are
dropped and the next ``n_keep`` kept; ``theta_0 + lam * sum_t masked tau_t``.

Ties of magnitude are ranked by position (the lower position counts as larger). Where ``int(top n) = 0``,
mergekit's slice ``indices[n_bot:-0]`` keeps nothing; we keep the ``n_keep`` largest. The magnitude sort runs on
``device``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.merging._common import key_task_vectors, to_host
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.sparse import sorted_top_torch, top_segments_numpy
from peru_core.types import Progress, StateDict


def breadcrumbs_mask(tv: torch.Tensor, keep: float, top: float) -> torch.Tensor:
    """The entries of ``tv`` kept: not among the ``int(top n)`` largest magnitudes, among the next ``int(keep n)``
    (``keep``, ``top``: fractions)."""
    n = tv.numel()
    if keep >= 1:
        return torch.ones_like(tv, dtype=torch.bool)  # mergekit returns the tensor unchanged
    n_keep, n_top = int(keep * n), int(top * n)
    n_top = min(n_top, n - n_keep)
    flat = tv.reshape(-1)
    # positions of the n_top + n_keep largest magnitudes, largest first, ties to the lower position: on the CPU a
    # partition then a sort of that slice only, elsewhere one stable sort
    if flat.device.type == "cpu":
        order = torch.from_numpy(top_segments_numpy(flat.numpy(), [(0, n)], [n_top + n_keep])[0][0])
    else:
        order = torch.from_numpy(sorted_top_torch(flat, n_top + n_keep)[0])
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[n_top:]] = True
    return mask.view(tv.shape).to(tv.device)


def breadcrumbs_merge(base: StateDict, finetuned: Sequence[StateDict], keep: float, top: float, lam: float, *,
                      on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Model Breadcrumbs (``keep`` and ``top`` as fractions), sorts on ``device``; the result is in host memory."""
    out: StateDict = {}
    for key, b, tvs in key_task_vectors(base, finetuned, resolve_device(device), on_progress,
                                        "Breadcrumbs: mask outliers and small entries"):
        total = torch.zeros_like(b)
        for tv in tvs:
            total += tv * breadcrumbs_mask(tv, keep, top)
        out[key] = to_host(b + lam * total, base[key])
    return out


@merge_method("breadcrumbs", label="Model Breadcrumbs", paper="https://arxiv.org/abs/2312.06795",
              params=(Param("keep", 10.0, 0.0, 100.0, "percent of each tensor's task-vector entries kept (after the "
                            "outliers)", step=1.0, label="Kept", unit="%"),
                      Param("top", 1.0, 0.0, 20.0, "percent of each tensor's largest task-vector entries dropped as "
                            "outliers", step=0.1, label="Outliers dropped", unit="%"),
                      Param("lam", 0.3, 0.0, 2.0, "scale of the summed masked task vectors", step=0.05,
                            label="Scaling λ")),
              summary="Drop each task vector's outliers and small entries per tensor, then add them up.")
def breadcrumbs(base: StateDict, finetuned: Sequence[StateDict], *, keep: float, top: float, lam: float,
                context: Optional[MergeContext] = None, on_progress: Progress = None,
                device: DeviceLike = None) -> StateDict:
    """Drop each task vector's outliers and small entries per tensor, then add them up (sorts on ``device``)."""
    return breadcrumbs_merge(base, finetuned, keep / 100.0, top / 100.0, lam, on_progress=on_progress, device=device)
