"""TIES-Merging: trim, elect sign, disjoint mean.

Paper: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", https://arxiv.org/abs/2306.01708 ;
a merge PERU-FFT can build on (https://arxiv.org/abs/2310.01886).

1. trim: keep the top-k% entries of each task vector by magnitude (global over the whole task vector);
   entries with ``|v| >= `` the k-th largest magnitude are kept (ties at the threshold are all kept, as in the
   reference code), k = ``floor(d * k% / 100 + 1/2)``; k = 0 keeps nothing;
2. elect: ``sign(sum_t trimmed_t)`` per entry;
3. disjoint mean: average the trimmed entries whose sign equals the elected sign (zeros never count);
4. ``theta_0 + lam * merged``.

Zero elected sign (the trimmed values cancel exactly, or none was kept): the merged entry is 0, i.e. the base
value is kept. (The reference code falls back to the sign of the sum of all elected signs; we do not, so the
result does not depend on entries elsewhere in the model.) Other tools' conventions (trim count, zero sign, trim
scope, disjoint sum) are options of :func:`ties_merge`: see :mod:`peru_core.merging.ties_conventions`.

Speed: thresholds by one in-place ``numpy.partition`` per task on a reused buffer (one ``topk`` on a GPU), then
one fused pass over chunks that keeps four running sums (trimmed values, magnitudes, signs, non-zeros) instead of
stacking T task vectors. On a GPU the same pass runs there, one whole tensor per step; the inputs stay in host memory
and only the merged tensor comes back.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.merging.ties_conventions import DEFAULT as DEFAULT_CONVENTION, PRESETS, ties_merge_convention
from peru_core.sparse import keep_count
from peru_core.statedict import FUSED_CHUNK as CHUNK, Layout, flat_difference, tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report


def ties_thresholds(base: StateDict, finetuned: Sequence[StateDict], k: float, keys: Sequence[str],
                    on_progress: Progress = None, device: DeviceLike = None) -> list[float]:
    """Per task, the magnitude of its k-th largest task-vector entry (``inf`` keeps nothing, 0 keeps all)."""
    device = resolve_device(device)
    layout = Layout.of(finetuned[0], keys)
    d = layout.size
    count = keep_count(d, k)
    if count == 0:
        return [math.inf] * len(finetuned)
    if count == d:
        return [0.0] * len(finetuned)
    buf = torch.empty(d, dtype=torch.float32)  # one scratch buffer for every task
    out = []
    for t, sd in enumerate(finetuned):
        flat_difference(sd, base, layout, out=buf).abs_()
        if device.type == "cpu":
            arr = buf.numpy()
            arr.partition(d - count)  # linear-time selection, in place
            out.append(float(arr[d - count]))
        else:  # the same order statistic: the smallest of the top `count` (2 ms for 88M values on an H100, where
            # kthvalue took 639 ms and a full sort 4.5 ms with twice the memory)
            out.append(float(torch.topk(buf.to(device), count, sorted=False).values.min()))
        report(on_progress, 0.5 * (t + 1) / len(finetuned), f"TIES: trim threshold of task {t + 1}")
    return out


def ties_merge(base: StateDict, finetuned: Sequence[StateDict], k: float, lam: float, *,
               on_progress: Progress = None, device: DeviceLike = None, trim_count: str = "round",
               zero_sign: str = "base", scope: str = "global", aggregate: str = "mean") -> StateDict:
    """TIES-Merging of ``finetuned`` onto ``base`` (``k`` percent kept per task, scale ``lam``), computed on
    ``device`` (default: the GPU when there is one); the result is in host memory.

    ``trim_count``, ``zero_sign``, ``scope`` and ``aggregate`` select other tools' conventions (FusionBench, the TIES
    authors' code, mergekit; table and named presets in :mod:`peru_core.merging.ties_conventions`); the defaults
    are ours and take the fused path below."""
    convention = {"trim_count": trim_count, "zero_sign": zero_sign, "scope": scope, "aggregate": aggregate}
    if convention != DEFAULT_CONVENTION:
        return ties_merge_convention(base, finetuned, k, lam, on_progress=on_progress, device=device, **convention)
    device = resolve_device(device)
    keys = tuned_keys(base, finetuned)
    # ``threshold_`` keeps a > t: the float32 just below each threshold turns that into |v| >= threshold
    below = [float(np.nextafter(np.float32(t), np.float32(-np.inf))) for t in
             ties_thresholds(base, finetuned, k, keys, on_progress, device)]
    out: StateDict = {}
    largest = max(base[key].numel() for key in keys)
    # on the CPU a chunk stays in cache; on a GPU one launch per whole tensor is what pays
    chunk = CHUNK if device.type == "cpu" else largest
    n_chunk = min(chunk, largest)
    v, a = torch.empty(n_chunk, device=device), torch.empty(n_chunk, device=device)
    # running sums over tasks: trimmed values, their magnitudes, their signs, their squared signs (= non-zeros);
    # float-only ops (bool masks and their promotions cost 4-5x more per element here)
    acc = torch.empty(4, n_chunk, device=device)
    for i, key in enumerate(keys):
        wd = work_dtype(base[key].dtype)
        if v.dtype != wd:
            v, a, acc = v.to(wd), a.to(wd), acc.to(wd)
        b_all = base[key].reshape(-1).to(device)
        fl = [sd[key].reshape(-1).to(device) for sd in finetuned]  # no copy on the CPU
        res = torch.empty(b_all.numel(), dtype=wd, device=device)
        for s in range(0, b_all.numel(), chunk):
            n = min(chunk, b_all.numel() - s)
            b = b_all[s:s + n]
            vv, aa = v[:n], a[:n]
            tot, mag, sgn, nnz = acc[:, :n]
            acc[:, :n].zero_()
            for t, f in enumerate(fl):
                torch.sub(f[s:s + n], b, out=vv)
                torch.abs(vv, out=aa)
                torch.threshold_(aa, below[t], 0.0)  # trim: |v| below the task's threshold -> 0
                torch.copysign(aa, vv, out=vv)  # trimmed v
                tot.add_(vv)
                mag.add_(aa)
                torch.sign(vv, out=vv)
                sgn.add_(vv)
                nnz.addcmul_(vv, vv)
            # elect sign = sign(tot); disjoint mean over the agreeing entries (0 where the elected sign is 0):
            # positive part sum (mag + tot) / 2 over (nnz + sgn) / 2 entries; negative part (tot - mag) / 2 over
            # (nnz - sgn) / 2 entries
            pos = torch.add(mag, tot).div_(torch.add(nnz, sgn).clamp_(min=1.0))
            neg = torch.sub(tot, mag).div_(torch.sub(nnz, sgn).clamp_(min=1.0))
            merged = torch.where(tot > 0, pos, torch.where(tot < 0, neg, 0.0))
            torch.add(b.to(wd), merged, alpha=lam, out=res[s:s + n])
        out[key] = res.view(base[key].shape).to("cpu", base[key].dtype)
        report(on_progress, 0.5 + 0.5 * (i + 1) / len(keys), "TIES: elect and merge")
    return out


def _aliases(option: str) -> dict[str, str]:
    """A tool's name for its choice of ``option`` (``fusionbench`` -> ``majority`` for ``zero_sign``)."""
    return {preset: convention[option] for preset, convention in PRESETS.items()}


# Other tools' conventions as choices (defaults: ours, so the default spec's key and results are unchanged); a
# tool's name is an alias of its choice (PRESETS), so ``--param zero_sign=fusionbench`` works too.
CONVENTION_PARAMS = (
    Param.choice("trim_count", "round", ("round", "int+1", "int"),
                 "how many entries the trim keeps out of d at k%", label="Trim count",
                 labels=("round(d·k) plus ties (PERU Studio)", "int(d·k) + 1 plus ties (FusionBench, TIES code)",
                         "exactly int(d·k) (mergekit)"),
                 aliases=_aliases("trim_count")),
    Param.choice("zero_sign", "base", ("base", "majority", "plus"),
                 "what an entry whose elected sign is 0 gets", label="Zero elected sign",
                 labels=("keep the base value (PERU Studio)",
                         "sign of the sum of all elected signs (FusionBench, TIES code)", "elect + (mergekit)"),
                 aliases=_aliases("zero_sign")),
    Param.choice("scope", "global", ("global", "per-tensor"), "what the top-k% trim ranks over",
                 label="Trim over", labels=("the whole task vector (PERU Studio, FusionBench)",
                                            "each tensor (mergekit)"), aliases=_aliases("scope")),
    Param.choice("aggregate", "mean", ("mean", "sum"), "how the agreeing entries are combined",
                 label="Agreeing entries", labels=("disjoint mean (PERU Studio, TIES paper, mergekit)",
                                                   "disjoint sum (FusionBench's default, with λ = 0.3)"),
                 aliases=_aliases("aggregate")),
)


@merge_method("ties", label="TIES-Merging", paper="https://arxiv.org/abs/2306.01708",
              params=(Param("k", 20.0, 0.0, 100.0, "percent of each task vector kept (trim)", step=1.0, label="Kept k",
                            unit="%"),
                      Param("lam", 1.0, 0.0, 3.0, "scale of the merged task vector", step=0.05, label="Scaling λ"),
                      *CONVENTION_PARAMS),
              summary="Trim each task vector, elect a sign per entry, average the agreeing entries.")
def ties(base: StateDict, finetuned: Sequence[StateDict], *, k: float, lam: float, trim_count: str = "round",
         zero_sign: str = "base", scope: str = "global", aggregate: str = "mean",
         context: Optional[MergeContext] = None, on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Trim each task vector, elect a sign per entry, average the agreeing entries (conventions: see
    :mod:`peru_core.merging.ties_conventions`)."""
    return ties_merge(base, finetuned, k, lam, on_progress=on_progress, device=device, trim_count=trim_count,
                      zero_sign=zero_sign, scope=scope, aggregate=aggregate)
