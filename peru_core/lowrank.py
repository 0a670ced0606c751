"""LoRA products without dense SVDs: QR-core SVD, spectra and rank-q truncation (PERU-LoRA).

``Delta = s * B @ A`` (B: out x r, A: r x in). With ``B = Q_b R_b`` and ``A^T = Q_a R_a`` (reduced QR),
``Delta = Q_b (s R_b R_a^T) Q_a^T``; the SVD of the r x r core ``s R_b R_a^T = U_c S V_c^T`` gives
``Delta = (Q_b U_c) S (Q_a V_c)^T``. Cost O((out + in) r^2 + r^3) instead of O(out * in * min(out, in)); computed in
float64 because the float32 core misses 1e-4 on badly conditioned factors. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import numpy as np
import torch

from peru_core.errors import PeruError
from peru_core.io import LoraAdapter, LoraFactors
from peru_core.statedict import work_dtype
from peru_core.types import Progress, StateDict, report


@dataclass(frozen=True, eq=False)
class LowRank:
    """``U @ diag(S) @ Vh`` (U: out x q, S: q descending, Vh: q x in)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.U.shape[0]), int(self.Vh.shape[1])

    @property
    def params(self) -> int:
        """Stored values as the paper counts them: ``q (d_out + d_in + 1)``."""
        return self.rank * (self.shape[0] + self.shape[1] + 1)

    def truncate(self, rank: int) -> "LowRank":
        """The best rank-``rank`` approximation (Eckart-Young); ranks above the available one keep everything."""
        if rank < 0:
            raise PeruError(f"rank={rank} is negative; give a rank of 0 or more.")
        q = min(int(rank), self.rank)
        return LowRank(self.U[:, :q], self.S[:q], self.Vh[:q])

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense matrix (out x in)."""
        return ((self.U * self.S) @ self.Vh).to(dtype)

    def to(self, dtype: torch.dtype) -> "LowRank":
        return LowRank(self.U.to(dtype), self.S.to(dtype), self.Vh.to(dtype))


def product_svd(A: torch.Tensor, B: torch.Tensor, scale: float = 1.0) -> LowRank:
    """Thin SVD of ``scale * B @ A`` via QR(B), QR(A^T) and an r x r core SVD, in float64 (never a dense SVD)."""
    A64, B64 = A.detach().to(torch.float64), B.detach().to(torch.float64)
    qb, rb = torch.linalg.qr(B64)  # out x r', r' x r
    qa, ra = torch.linalg.qr(A64.T)  # in x r'', r'' x r
    uc, s, vch = torch.linalg.svd(scale * (rb @ ra.T), full_matrices=False)
    return LowRank(qb @ uc, s, vch @ qa.T)


def factors_svd(f: LoraFactors) -> LowRank:
    return product_svd(f.A, f.B, f.scale)


def adapter_svd(adapter: LoraAdapter, on_progress: Progress = None) -> dict[str, LowRank]:
    """:func:`product_svd` of every LoRA product of ``adapter`` (float64 factors)."""
    out = {}
    for i, (key, f) in enumerate(adapter.items()):
        out[key] = factors_svd(f)
        report(on_progress, (i + 1) / len(adapter), f"SVD of {adapter.name} LoRA products")
    return out


def lora_spectra(adapter: LoraAdapter) -> dict[str, np.ndarray]:
    """All singular values of each LoRA product, descending (min(r, out, in) of them; the rest are exactly 0)."""
    return {k: lr.S.numpy().copy() for k, lr in adapter_svd(adapter).items()}


def task_vector_spectra(base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], *,
                        dtype: torch.dtype = torch.float32, on_progress: Progress = None) -> dict[str, np.ndarray]:
    """Singular values (descending) of every 2-D matrix of ``theta_t - theta_0`` (full fine-tunes: dense SVDs)."""
    keys = [k for k, v in finetuned.items() if v.dim() == 2]
    out = {}
    for i, k in enumerate(keys):
        out[k] = torch.linalg.svdvals(finetuned[k].to(dtype) - base[k].to(dtype)).numpy()
        report(on_progress, (i + 1) / max(1, len(keys)), "singular values of the task vector")
    return out


def truncate_adapter(svds: Mapping[str, LowRank], rank: int, dtype: Optional[torch.dtype] = None) -> dict[str, LowRank]:
    """Rank-``rank`` truncation of every product (factors cast to ``dtype`` when given)."""
    return {k: (lr.truncate(rank).to(dtype) if dtype is not None else lr.truncate(rank)) for k, lr in svds.items()}


def apply_lowrank(base: Mapping[str, torch.Tensor], parts: Mapping[str, LowRank], *,
                  keys: Optional[Iterable[str]] = None) -> StateDict:
    """``base + U S Vh`` for each part; other keys of ``base`` (or of ``keys``) are shared, not copied."""
    out: StateDict = {k: base[k] for k in (keys if keys is not None else base.keys())}
    for k, lr in parts.items():
        w = base[k]
        wd = work_dtype(w.dtype)
        upd = w.to(wd, copy=True)
        if lr.rank:
            upd.addmm_((lr.U * lr.S).to(wd), lr.Vh.to(wd))
        out[k] = upd.to(w.dtype)
    return out
