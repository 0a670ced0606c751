"""DARE (Drop And REscale) on Task Arithmetic and on TIES.

Paper: Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
ICML 2024, https://arxiv.org/abs/2311.03099 . Each task vector entry is dropped with probability p and the kept ones
are rescaled by ``1 / (1 - p)``; the dropped task vectors then go through Task Arithmetic or TIES.

Randomness: one ``torch.Generator`` seeded with ``seed`` on the CPU draws ``torch.rand`` for every tensor, task by
task and key by key in the checkpoint's order, and keeps ``u > p``; this is FusionBench's draw
(``fusion_bench/method/dare/utils.py::param_random_drop_`` after ``torch.manual_seed(seed)``), so the same seed drops
the same entries there, on any device. (mergekit's ``dare_linear`` / ``dare_ties`` draw with ``torch.bernoulli`` and
rescale each tensor to its former L1 norm instead of by ``1 / (1 - p)``.)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.merging.ties import ties_merge
from peru_core.statedict import task_vector, tuned_keys
from peru_core.types import Progress, StateDict, report


def dare_drop_(tv: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry of ``tv`` with probability ``p`` (``u > p`` keeps it), rescale by ``1 / (1 - p)``, in place."""
    keep = torch.rand(tv.shape, generator=generator) > p
    return tv.mul_(keep).div_(1 - p)


def dare_task_vectors(base: StateDict, finetuned: Sequence[StateDict], p: float, seed: int, *,
                      on_progress: Progress = None):
    """Yield each task's dropped and rescaled task vector (work dtype, host memory), drawing in FusionBench's order."""
    keys = tuned_keys(base, finetuned)
    g = torch.Generator().manual_seed(int(seed))
    for t, sd in enumerate(finetuned):
        tv = task_vector({k: sd[k] for k in keys}, base)
        for k in keys:
            dare_drop_(tv[k], p, g)
        report(on_progress, (t + 1) / len(finetuned), f"DARE: drop and rescale task {t + 1}")
        yield tv


def dare_ta_merge(base: StateDict, finetuned: Sequence[StateDict], p: float, lam: float, seed: int, *,
                  on_progress: Progress = None) -> StateDict:
    """``theta_0 + lam * sum_t DARE(tau_t)`` (memory-bound: host memory; one running sum, not T task vectors)."""
    acc: Optional[StateDict] = None
    for tv in dare_task_vectors(base, finetuned, p, seed, on_progress=on_progress):
        acc = tv if acc is None else {k: acc[k].add_(v) for k, v in tv.items()}
    return {k: (base[k].to(v.dtype) + v * lam).to(base[k].dtype) for k, v in acc.items()}


def dare_ties_merge(base: StateDict, finetuned: Sequence[StateDict], p: float, k: float, lam: float, seed: int, *,
                    on_progress: Progress = None, device: DeviceLike = None, **convention) -> StateDict:
    """TIES (``k``% kept, scale ``lam``, TIES ``convention`` options) on the DARE task vectors, on ``device``."""
    def half(f: float, msg: str) -> None:
        report(on_progress, 0.3 * f, msg)

    tvs = list(dare_task_vectors(base, finetuned, p, seed, on_progress=half))
    zero = {key: torch.zeros_like(v) for key, v in tvs[0].items()}

    def rest(f: float, msg: str) -> None:
        report(on_progress, 0.3 + 0.7 * f, msg)

    merged = ties_merge(zero, tvs, k, lam, on_progress=rest, device=device, **convention)  # lam * merged tau
    return {key: (base[key].to(m.dtype) + m).to(base[key].dtype) for key, m in merged.items()}


_P = Param("p", 50.0, 0.0, 99.0, "share of each task vector's entries dropped at random; the kept ones are scaled "
           "by 1 / (1 - p)", step=5.0, label="Drop rate p", unit="%")
_SEED = Param("seed", 0, 0, 9999, "seed of the random drop (the same seed drops the same entries)", step=1,
              integer=True, label="Seed")


@merge_method("dare_task_arithmetic", label="DARE + Task Arithmetic", paper="https://arxiv.org/abs/2311.03099",
              params=(_P, Param("lam", 0.3, 0.0, 2.0, "scale of the summed task vectors", step=0.05,
                                label="Scaling λ"), _SEED),
              summary="Drop task-vector entries at random, rescale the rest, add them up.")
def dare_task_arithmetic(base: StateDict, finetuned: Sequence[StateDict], *, p: float, lam: float, seed: int,
                         context: Optional[MergeContext] = None, on_progress: Progress = None,
                         device: DeviceLike = None) -> StateDict:
    """Drop task-vector entries at random, rescale the rest, add them up (host memory)."""
    return dare_ta_merge(base, finetuned, p / 100.0, lam, seed, on_progress=on_progress)


@merge_method("dare_ties", label="DARE + TIES", paper="https://arxiv.org/abs/2311.03099",
              params=(_P, Param("k", 20.0, 0.0, 100.0, "percent of each dropped task vector kept by the TIES trim",
                                step=1.0, label="Kept k", unit="%"),
                      Param("lam", 1.0, 0.0, 3.0, "scale of the merged task vector", step=0.05, label="Scaling λ"),
                      _SEED),
              summary="Drop task-vector entries at random, rescale the rest, then TIES-merge them.")
def dare_ties(base: StateDict, finetuned: Sequence[StateDict], *, p: float, k: float, lam: float, seed: int,
              context: Optional[MergeContext] = None, on_progress: Progress = None,
              device: DeviceLike = None) -> StateDict:
    """Drop task-vector entries at random, rescale the rest, then TIES-merge them (TIES kernels on ``device``)."""
    return dare_ties_merge(base, finetuned, p / 100.0, k, lam, seed, on_progress=on_progress, device=device)
