"""LiNeS (Layer-increasing Network Scaling) of the Task Arithmetic merge: shallow blocks keep the base, deep blocks
take the merged task vector.

Paper: Wang et al., "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging", ICLR 2025,
https://arxiv.org/abs/2410.17146 . Follows the authors' code (wang-kee/LiNeS, ``src/eval/eval.py::LiNeS_scaling``
with the multi-task ``alpha``):

* the merged task vector is ``tau = sum_t tau_t``; block l of L (counting from 0) is scaled by
  ``alpha + beta * l / (L - 1)`` and every tensor outside the blocks by ``alpha``;
* ``alpha = (|sum_t tau_t|_1 / |tau|_1) / T``, which is ``1 / T`` for the Task Arithmetic sum;
* ``theta_0 + scaled tau``.

A tensor's block is the first ``.<i>.`` in its name (``visual.transformer.resblocks.3.mlp...`` is block 3) and L is
one more than the largest block found; the authors hard-code L (12 for ViT-B). With a single block, that block is
the deepest (scale ``alpha + beta``). Memory-bound: host memory.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from peru_core.device import DeviceLike
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys, weighted_sum
from peru_core.types import Progress, StateDict, report

_BLOCK = re.compile(r"(?:^|\.)(\d+)\.")


def block_of(key: str) -> Optional[int]:
    """The block index of a parameter name (the first ``.<i>.``), or None outside the repeated blocks."""
    m = _BLOCK.search(key)
    return int(m.group(1)) if m else None


def lines_scales(keys: Sequence[str], alpha: float, beta: float) -> dict[str, float]:
    """Per key, ``alpha + beta * l / (L - 1)`` for block l of L, ``alpha`` outside the blocks."""
    blocks = {k: block_of(k) for k in keys}
    found = [b for b in blocks.values() if b is not None]
    last = max(found) if found else 0
    return {k: alpha if b is None else alpha + beta * (b / last if last else 1.0) for k, b in blocks.items()}


def lines_merge(base: Mapping, finetuned: Sequence[Mapping], beta: float, *,
                on_progress: Progress = None) -> StateDict:
    """LiNeS on the Task Arithmetic sum: ``theta_0 + s_l sum_t tau_t`` with ``s_l = 1/T + beta l / (L - 1)``."""
    keys = tuned_keys(base, finetuned)
    n = len(finetuned)
    scales = lines_scales(keys, 1.0 / n, beta)
    out: StateDict = {}
    for i, key in enumerate(keys):  # (1 - s T) theta_0 + s sum_t theta_t, one pass per tensor
        out.update(weighted_sum(base, finetuned, 1.0 - scales[key] * n, scales[key], [key]))
        report(on_progress, (i + 1) / len(keys), "LiNeS: scale the task-vector sum by depth")
    return out


@merge_method("lines", label="LiNeS (Task Arithmetic)", paper="https://arxiv.org/abs/2410.17146",
              params=(Param("beta", 0.5, 0.0, 3.0, "extra scale of the deepest block over the shallowest; block l of "
                            "L gets 1/T + beta l / (L - 1), tensors outside the blocks 1/T", step=0.05,
                            label="Depth scale β"),),
              summary="Scale the summed task vectors from 1/T in the first block up to 1/T + β in the last.")
def lines(base: StateDict, finetuned: Sequence[StateDict], *, beta: float, context: Optional[MergeContext] = None,
          on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """Scale the summed task vectors from 1/T in the first block up to 1/T + β in the last (host memory)."""
    return lines_merge(base, finetuned, beta, on_progress=on_progress)
