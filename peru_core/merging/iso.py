"""Iso-C and Iso-CTS: merge in a subspace, then flatten the spectrum (isotropic merging).

Paper: Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces",
ICML 2025, https://arxiv.org/abs/2502.04959 . Follows FusionBench
(``fusion_bench/method/isotropic_merging/iso_utils.py``):

* Iso-C, per 2-D matrix: ``sum_t tau_t = U S V^T`` becomes ``U (mean(S) I) V^T``;
* Iso-CTS, per 2-D matrix: the top ``c`` directions of ``sum_t tau_t`` (the common subspace, ``c`` from the common
  fraction, rounded so the rest divides into T equal parts) plus, per task, the top ``(min(m, n) - c) / T``
  directions of ``tau_t`` projected off the common subspace; both bases orthogonalised by their polar factors, all
  singular values replaced by their mean;
* every other tensor is the mean task vector; ``theta_0 + lam * merged``.

Where FusionBench's rounding would make the task part larger than the matrix (few directions, many tasks), the task
part is rounded down instead. The SVDs run on ``device``, one matrix at a time.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.merging._common import key_task_vectors, to_host
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.merging.tsv import polar
from peru_core.types import Progress, StateDict


def iso_c_matrix(tvs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Iso-C of one matrix: the spectrum of the summed task vectors made flat at its mean."""
    u, s, vh = torch.linalg.svd(sum(tvs), full_matrices=False)
    return torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), vh))


def common_size(r: int, n_tasks: int, fraction: float) -> int:
    """Directions of the common subspace out of ``r``, so that ``r - c`` splits into ``n_tasks`` equal parts."""
    c = int(r * fraction)
    task_total = round((r - c) / n_tasks) * n_tasks  # FusionBench's (Python's round: halves to even)
    if task_total > r:
        task_total = (r // n_tasks) * n_tasks
    return r - task_total


def iso_cts_matrix(tvs: Sequence[torch.Tensor], fraction: float) -> torch.Tensor:
    """Iso-CTS of one matrix (common ``fraction`` of the directions, the rest split between the tasks)."""
    n, r = len(tvs), min(tvs[0].shape)
    c = common_size(r, n, fraction)
    u, s, vh = torch.linalg.svd(sum(tvs), full_matrices=False)
    cu, cs, cvh = u[:, :c], s[:c], vh[:c, :]
    per = int((r - c) / n)
    bu, bs, bvh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
    for i, w in enumerate(tvs):
        ut, st, vht = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)  # off the common subspace
        bu[:, i * per:(i + 1) * per] = ut[:, :per]
        bs[i * per:(i + 1) * per] = st[:per]
        bvh[i * per:(i + 1) * per, :] = vht[:per, :]
    bu[:, n * per:n * per + c], bs[n * per:n * per + c], bvh[n * per:n * per + c, :] = cu, cs, cvh
    return torch.linalg.multi_dot((polar(bu), torch.diag(torch.ones_like(bs) * bs.mean()), polar(bvh)))


def iso_merge(base: StateDict, finetuned: Sequence[StateDict], lam: float, common: Optional[float] = None, *,
              on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Iso-C (``common=None``) or Iso-CTS (``common``: fraction of the directions in the common subspace) of
    ``finetuned`` onto ``base``, SVDs on ``device``; the result is in host memory."""
    name = "Iso-C" if common is None else "Iso-CTS"
    out: StateDict = {}
    for key, b, tvs in key_task_vectors(base, finetuned, resolve_device(device), on_progress,
                                        f"{name}: isotropic spectrum per matrix"):
        if b.dim() != 2:
            merged = torch.stack(tvs).mean(0)
        else:
            mats = [tv.float() for tv in tvs] if b.dtype not in (torch.float32, torch.float64) else tvs
            merged = (iso_c_matrix(mats) if common is None else iso_cts_matrix(mats, common)).to(b.dtype)
        out[key] = to_host(b + lam * merged, base[key])
    return out


_LAM = Param("lam", 1.0, 0.0, 3.0, "scale of the merged task vector (tuned on validation in the paper)", step=0.05,
             label="Scaling λ")


@merge_method("iso_c", label="Iso-C", paper="https://arxiv.org/abs/2502.04959", params=(_LAM,),
              summary="Sum the task vectors per matrix and flatten its singular values to their mean.")
def iso_c(base: StateDict, finetuned: Sequence[StateDict], *, lam: float, context: Optional[MergeContext] = None,
          on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Sum the task vectors per matrix and flatten its singular values to their mean (SVDs on ``device``)."""
    return iso_merge(base, finetuned, lam, on_progress=on_progress, device=device)


@merge_method("iso_cts", label="Iso-CTS", paper="https://arxiv.org/abs/2502.04959",
              params=(_LAM, Param("common", 80.0, 0.0, 100.0, "share of each matrix's directions taken from the "
                                  "summed task vectors; the rest is split equally between the tasks", step=5.0,
                                  label="Common subspace", unit="%")),
              summary="A common subspace plus one per task, orthogonalised, with a flat spectrum.")
def iso_cts(base: StateDict, finetuned: Sequence[StateDict], *, lam: float, common: float,
            context: Optional[MergeContext] = None, on_progress: Progress = None,
            device: DeviceLike = None) -> StateDict:
    """A common subspace plus one per task, orthogonalised, with a flat spectrum (SVDs on ``device``)."""
    return iso_merge(base, finetuned, lam, common / 100.0, on_progress=on_progress, device=device)
