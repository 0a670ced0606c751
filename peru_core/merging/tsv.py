"""TSV-M (Task Singular Vectors: Merge): per weight matrix, each task's top 1/T singular triplets, whitened.

Paper: Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025,
https://arxiv.org/abs/2412.00081 . Follows FusionBench
(``fusion_bench/method/task_singular_vector/utils/TSVM_utils.py::compute_and_sum_svd_mem_reduction``):

1. per 2-D task-vector matrix ``tau_t = U_t S_t V_t^T``, keep its ``k = floor(min(m, n) / T)`` largest triplets and
   place them side by side: ``U = [U_1k .. U_Tk]``, ``S``, ``V`` (the remaining ``min(m, n) - T k`` slots are 0);
2. orthogonalise the stacked bases by their polar factors (``U -> P Q^T`` for ``U = P Sigma Q^T``, the same for V);
3. the merged matrix is ``U_perp diag(S) V_perp^T``; every other tensor (biases, norms, conv kernels) is the mean
   task vector;
4. ``theta_0 + alpha * merged``.

The SVDs run on ``device`` (the GPU when there is one), one matrix at a time.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.merging._common import key_task_vectors, to_host
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.types import Progress, StateDict


def polar(x: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``P Q^T`` of ``x = P Sigma Q^T`` (the nearest matrix with orthonormal columns)."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def tsv_matrix(tvs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The TSV-M merge of one weight matrix from its T task vectors (float32 at least)."""
    n = len(tvs)
    mats = [tv.float() if tv.dtype not in (torch.float32, torch.float64) else tv for tv in tvs]
    svds = [torch.linalg.svd(m, full_matrices=False) for m in mats]
    u0, s0, vh0 = svds[0]
    k = int(s0.shape[0] * (1 / n))  # FusionBench's sv_reduction = 1 / T
    u, s, vh = torch.zeros_like(u0), torch.zeros_like(s0), torch.zeros_like(vh0)
    for i, (ui, si, vhi) in enumerate(svds):
        u[:, i * k:(i + 1) * k] = ui[:, :k]
        s[i * k:(i + 1) * k] = si[:k]
        vh[i * k:(i + 1) * k, :] = vhi[:k, :]
    return torch.linalg.multi_dot((polar(u), torch.diag(s), polar(vh)))


def tsv_merge(base: StateDict, finetuned: Sequence[StateDict], alpha: float, *, on_progress: Progress = None,
              device: DeviceLike = None) -> StateDict:
    """TSV-M of ``finetuned`` onto ``base`` with scale ``alpha``, SVDs on ``device``; the result is in host memory."""
    out: StateDict = {}
    for key, b, tvs in key_task_vectors(base, finetuned, resolve_device(device), on_progress,
                                        "TSV-M: task singular vectors per matrix"):
        merged = tsv_matrix(tvs).to(b.dtype) if b.dim() == 2 else torch.stack(tvs).mean(0)
        out[key] = to_host(b + alpha * merged, base[key])
    return out


@merge_method("tsv_m", label="TSV-M", paper="https://arxiv.org/abs/2412.00081",
              params=(Param("alpha", 1.0, 0.0, 3.0, "scale of the merged task vector (the paper uses 1.0)",
                            step=0.05, label="Scaling α"),),
              summary="Per weight matrix, each task's top singular vectors side by side, decorrelated.")
def tsv_m(base: StateDict, finetuned: Sequence[StateDict], *, alpha: float, context: Optional[MergeContext] = None,
          on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Per weight matrix, each task's top singular vectors side by side, decorrelated (SVDs on ``device``)."""
    return tsv_merge(base, finetuned, alpha, on_progress=on_progress, device=device)
