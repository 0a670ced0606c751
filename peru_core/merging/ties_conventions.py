"""TIES-Merging under the conventions of other tools, so a published table can be reproduced exactly.

:func:`peru_core.merging.ties.ties_merge` takes four options (defaults: ours); any other choice runs here, one
tensor at a time on the compute device (the T trimmed task vectors of one tensor stacked there):

=================  ==========================================================  ================================
option             choices                                                     used by
=================  ==========================================================  ================================
``trim_count``     ``round``: ``floor(d k + 1/2)`` largest, plus ties           PERU Studio
                   ``int+1``: ``int(d k) + 1`` largest, plus ties               FusionBench, TIES authors' code
                   (``kthvalue(d - int(d k))``)
                   ``int``: exactly ``int(d k)`` (ties to the lower position)   mergekit (per tensor)
``zero_sign``      ``base``: an entry whose elected sign is 0 keeps the base    PERU Studio
                   ``majority``: it takes the sign of the sum of all elected    FusionBench, TIES authors' code
                   signs (if that is 0 too, the negative entries are merged)
                   ``plus``: it is elected '+'                                  mergekit
``scope``          ``global`` (whole task vector) or ``per-tensor`` trim        global: PERU, FusionBench;
                                                                                per-tensor: mergekit
``aggregate``      ``mean`` (disjoint mean) or ``sum`` (disjoint sum)           mean: PERU, TIES paper,
                                                                                mergekit; sum: FusionBench's
                                                                                default (with lam = 0.3)
=================  ==========================================================  ================================

``d`` is the number of entries trimmed over (the whole task vector, or one tensor) and ``k`` the kept fraction.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.errors import PeruError
from peru_core.sparse import keep_count, kth_largest_abs, sorted_top_torch
from peru_core.statedict import Layout, flat_difference, tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report

TRIM_COUNTS = ("round", "int+1", "int")
ZERO_SIGNS = ("base", "majority", "plus")
TRIM_SCOPES = ("global", "per-tensor")
AGGREGATES = ("mean", "sum")
DEFAULT = {"trim_count": "round", "zero_sign": "base", "scope": "global", "aggregate": "mean"}
PRESETS = {
    "peru": DEFAULT,
    "fusionbench": {"trim_count": "int+1", "zero_sign": "majority", "scope": "global", "aggregate": "sum"},
    "ties-paper": {"trim_count": "int+1", "zero_sign": "majority", "scope": "global", "aggregate": "mean"},
    "mergekit": {"trim_count": "int", "zero_sign": "plus", "scope": "per-tensor", "aggregate": "mean"},
}
"""Named sets of options: ours, FusionBench's TiesMergingAlgorithm defaults (use lam = 0.3 there), the TIES
authors' code with the paper's disjoint mean, and mergekit's ``ties`` method."""


def check_convention(trim_count: str, zero_sign: str, scope: str, aggregate: str) -> None:
    for name, value, allowed in (("trim_count", trim_count, TRIM_COUNTS), ("zero_sign", zero_sign, ZERO_SIGNS),
                                 ("scope", scope, TRIM_SCOPES), ("aggregate", aggregate, AGGREGATES)):
        if value not in allowed:
            raise PeruError(f"Unknown TIES {name} {value!r}; use one of: {', '.join(allowed)}.")


def trim_size(d: int, k: float, trim_count: str) -> int:
    """Entries kept out of ``d`` at ``k`` percent (before ties, which ``round`` and ``int+1`` keep too)."""
    if trim_count == "round":
        return keep_count(d, k)
    n = int(d * (k / 100.0))  # the references' int(d * fraction)
    return min(d, n + 1) if trim_count == "int+1" else min(d, n)


class _Trim:
    """Per task, what its trim keeps: a magnitude threshold per segment (ties kept) or, for ``int``, a mask."""

    def __init__(self, base: StateDict, finetuned: Sequence[StateDict], keys: list[str], k: float, trim_count: str,
                 scope: str, device: torch.device, on_progress: Progress):
        self.layout = Layout.of(finetuned[0], keys)
        spans = list(self.layout.spans())
        self.segments = [(0, self.layout.size)] if scope == "global" else [(s, e) for _, s, e in spans]
        self.exact = trim_count == "int"
        self.thresholds: list[list[float]] = []  # [task][segment]
        self.masks: list[np.ndarray] = []  # [task] flat bool (exact counts only)
        buf = torch.empty(self.layout.size, dtype=torch.float32)
        for t, sd in enumerate(finetuned):
            flat = flat_difference(sd, base, self.layout, out=buf).numpy()
            if self.exact:
                mask = np.zeros(self.layout.size, dtype=bool)
                for s, e in self.segments:
                    n = trim_size(e - s, k, trim_count)
                    if e - s and k >= 100:
                        mask[s:e] = True  # mergekit leaves a tensor at density >= 1 untouched
                    elif n:
                        order, _ = sorted_top_torch(torch.from_numpy(flat[s:e]).to(device), n)  # ties: lower position
                        mask[s + order] = True
                self.masks.append(mask)
            else:
                row = []
                for s, e in self.segments:
                    n = trim_size(e - s, k, trim_count)
                    row.append(math.inf if n == 0 else kth_largest_abs(flat[s:e], n))
                self.thresholds.append(row)
            report(on_progress, 0.3 * (t + 1) / len(finetuned), f"TIES: trim of task {t + 1}")

    def apply(self, t: int, key_index: int, v: torch.Tensor) -> torch.Tensor:
        """Task ``t``'s trimmed values of tensor ``key_index`` (``v``: its task vector, flat)."""
        s, e = self.layout.offsets[key_index], self.layout.offsets[key_index + 1]
        if self.exact:
            return v * torch.from_numpy(self.masks[t][s:e]).to(v.device)
        seg = 0 if len(self.segments) == 1 else key_index
        return v * (v.abs() >= self.thresholds[t][seg])


def ties_merge_convention(base: StateDict, finetuned: Sequence[StateDict], k: float, lam: float, *,
                          trim_count: str, zero_sign: str, scope: str, aggregate: str, on_progress: Progress = None,
                          device: DeviceLike = None) -> StateDict:
    """TIES-Merging with the given conventions (see the module table), on ``device``; the result is in host memory."""
    check_convention(trim_count, zero_sign, scope, aggregate)
    device = resolve_device(device)
    keys = tuned_keys(base, finetuned)
    trim = _Trim(base, finetuned, keys, k, trim_count, scope, device, on_progress)

    def trimmed(i: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        wd = work_dtype(base[key].dtype)
        b = base[key].reshape(-1).to(device, wd)
        return b, torch.stack([trim.apply(t, i, sd[key].reshape(-1).to(device, wd) - b)
                               for t, sd in enumerate(finetuned)])

    majority: Optional[float] = None
    if zero_sign == "majority":  # the sign of the sum of every elected sign, over the whole task vector
        total = sum(float(torch.sign(trimmed(i, key)[1].sum(0)).sum()) for i, key in enumerate(keys))
        majority = float(np.sign(total))
    out: StateDict = {}
    for i, key in enumerate(keys):
        b, v = trimmed(i, key)
        sign = torch.sign(v.sum(0))  # elect
        if zero_sign == "plus":
            sign[sign == 0] = 1.0
        elif zero_sign == "majority":
            sign[sign == 0] = majority
        if zero_sign == "base":
            agree = ((v > 0) & (sign > 0)) | ((v < 0) & (sign < 0))
        else:  # the references' selection: sign > 0 keeps the positives, anything else the negatives
            agree = torch.where(sign.unsqueeze(0) > 0, v > 0, v < 0)
        picked = v * agree
        merged = picked.sum(0)
        if aggregate == "mean":
            merged = merged / torch.clamp((picked != 0).sum(0).float(), min=1)
        out[key] = (b + lam * merged).view(base[key].shape).to("cpu", base[key].dtype)
        report(on_progress, 0.3 + 0.7 * (i + 1) / len(keys), "TIES: elect and merge")
    return out
