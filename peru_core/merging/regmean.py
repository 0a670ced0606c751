"""RegMean: per linear layer, the weights that best reproduce every model's outputs on its own inputs.

Paper: Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", https://arxiv.org/abs/2212.09849 ;
a baseline of PERU (https://arxiv.org/abs/2310.01886). For a linear map ``y = W x`` (PyTorch layout: W is out x in)
and Gram matrices ``G_t = X_t^T X_t`` of its inputs on task t:
``W^T = (sum_t G_t')^-1 sum_t G_t' W_t^T`` with ``G_t' = alpha G_t + (1 - alpha) diag(G_t)`` (off-diagonals scaled
by alpha). Tensors that are not linear weights with a Gram matrix (biases, norms, embeddings) are averaged.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from peru_core.device import DeviceLike
from peru_core.errors import PeruError
from peru_core.merging.fisher import SAMPLES
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report


def scale_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * G + (1 - alpha) * diag(G)``: the off-diagonal entries shrunk by ``alpha``."""
    return alpha * gram + (1.0 - alpha) * torch.diag_embed(torch.diagonal(gram))


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:  # singular (e.g. an input feature that is always 0): least-norm solution
        return torch.linalg.pinv(a) @ b


def regmean_merge(finetuned: Sequence[StateDict], grams: Sequence[Mapping[str, torch.Tensor]],
                  alpha: float) -> StateDict:
    """RegMean over the keys of ``finetuned``; a weight is solved for when every task has its Gram matrix."""
    if len(grams) != len(finetuned):
        raise PeruError(f"RegMean got {len(grams)} sets of Gram matrices for {len(finetuned)} models; give one per model.")
    out: StateDict = {}
    for k, ref in finetuned[0].items():
        if ref.dim() == 2 and all(k in g for g in grams):
            n_in = ref.shape[1]
            if any(tuple(g[k].shape) != (n_in, n_in) for g in grams):
                raise PeruError(f"The Gram matrix of {k!r} is not {n_in} x {n_in}, the input size of that layer.")
            g_sum = torch.zeros(n_in, n_in, dtype=torch.float64)
            rhs = torch.zeros(n_in, ref.shape[0], dtype=torch.float64)
            for sd, g in zip(finetuned, grams):
                gt = scale_off_diagonal(g[k].to(torch.float64), alpha)
                g_sum += gt
                rhs += gt @ sd[k].to(torch.float64).T
            out[k] = _solve(g_sum, rhs).T.contiguous().to(ref.dtype)
        else:
            dt = work_dtype(ref.dtype)
            out[k] = torch.stack([sd[k].to(dt) for sd in finetuned]).mean(0).to(ref.dtype)
    return out


@merge_method("regmean", label="RegMean", paper="https://arxiv.org/abs/2212.09849",
              params=(Param("alpha", 0.95, 0.0, 1.0, "scale of the Gram matrices' off-diagonal entries", step=0.05,
                            label="Off-diagonal scale α"),
                      SAMPLES),
              needs=("grams",), summary="Per linear layer, the least-squares fit to every model's outputs on its inputs.")
def regmean(base: StateDict, finetuned: Sequence[StateDict], *, alpha: float, samples: int,
            context: Optional[MergeContext] = None, on_progress: Progress = None,
            device: DeviceLike = None) -> StateDict:
    """Per linear layer, the least-squares fit to every model's outputs on its own inputs (the Gram matrices are
    computed on the context's device; the per-layer solves run in host memory)."""
    tuned_keys(base, finetuned)
    grams = []
    for t, sd in enumerate(finetuned):
        report(on_progress, t / (len(finetuned) + 1), f"Gram matrices of task {t + 1}/{len(finetuned)}")
        grams.append(context.grams(t, sd, samples))
    merged = regmean_merge(finetuned, grams, alpha)
    report(on_progress, 1.0, "RegMean done")
    return merged
