"""Straightforward TIES-Merging, the formula written out with full temporaries (T stacked task vectors).

Not for use: it is the reference the tests check :func:`peru_core.merging.ties.ties_merge` against and the named
baseline of ``benchmarks/bench_engine.py``. TIES: https://arxiv.org/abs/2306.01708 ; PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from typing import Sequence

import torch

from peru_core.sparse import keep_count
from peru_core.types import StateDict


def naive_ties(base: StateDict, finetuned: Sequence[StateDict], k: float, lam: float) -> StateDict:
    """Stack the task vectors, one ``kthvalue`` threshold per task, elect signs, disjoint mean (zero sign: base)."""
    keys = list(finetuned[0])
    flat = torch.stack([torch.cat([(sd[x] - base[x]).reshape(-1) for x in keys]) for sd in finetuned])
    d = flat.shape[1]
    n = keep_count(d, k)
    if n == 0:
        trimmed = torch.zeros_like(flat)
    else:
        thr = flat.abs().kthvalue(d - n + 1, dim=1, keepdim=True).values  # the n-th largest magnitude
        trimmed = flat * (flat.abs() >= thr)
    sign = torch.sign(trimmed.sum(0))
    agree = ((trimmed > 0) & (sign > 0)) | ((trimmed < 0) & (sign < 0))  # zero sign: nothing agrees
    merged = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    out, off = {}, 0
    for x in keys:
        m = base[x].numel()
        out[x] = base[x] + lam * merged[off:off + m].view(base[x].shape)
        off += m
    return out
