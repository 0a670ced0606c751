"""Parameter-efficient reuse (PERU, https://arxiv.org/abs/2310.01886): a shared model + a small part per task.

* Post-Pruning: ``theta_0 + top-m%(theta_t - theta_0)``;
* PERU-FFT: ``theta_star + top-m%(theta_t - theta_star)``, ``theta_star`` from any registered merge;
* PERU-LoRA: ``theta_0 + U_q S_q V_q^T``, the rank-q truncation of each LoRA product.

For one task, :class:`SparseReuse` / :class:`LoraReuse` give (a) the reconstructed tuned state dict for one setting
(``model``), (b) a cheap sweep over m or q (``sweep``: one partition + sort, or one small SVD per matrix, for all
settings) and (c) the task-specific part to save (``task_part``).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from peru_core.device import DeviceLike
from peru_core.errors import PeruError
from peru_core.io import LoraAdapter
from peru_core.lowrank import (LowRank, ProductSVD, adapter_svd, apply_lowrank, lowrank_buffer_size,
                               truncate_adapter)
from peru_core.merging.registry import MergeContext, get_method
from peru_core.sparse import SparseDelta, TopM, check_keep, check_scope
from peru_core.statedict import Layout, flat_difference, shared_buffer, work_dtype
from peru_core.types import Progress, StateDict

MODES = ("post-pruning", "peru-fft")


class SparseReuse:
    """One task's sparse reuse: ``shared + top-m%(finetuned - shared)`` over the fine-tuned keys.

    ``shared`` is theta_0 (Post-Pruning) or theta_star (PERU-FFT); it may hold more keys than ``finetuned``.
    Holds one flat difference vector (work dtype) and, once prepared, the sorted top slice. The sort runs on
    ``device`` (default: the GPU when there is one); everything it keeps is in host memory.
    """

    def __init__(self, shared: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                 scope: str = "global", *, device: DeviceLike = None, count: str = "round"):
        check_scope(scope)  # before the difference vector is formed
        self.shared = shared
        self.layout = Layout.of(finetuned)
        dtype = work_dtype(self.layout.dtypes[0]) if self.layout.dtypes else torch.float32
        diff = flat_difference(finetuned, shared, self.layout, dtype=dtype)
        self.selector = TopM(diff, self.layout, scope, device=device, count=count)  # count: see sparse.COUNTS
        # one preallocated model for every setting and every task of this size: reused while no earlier model is
        # still held (statedict.shared_buffer)
        self.buffer = shared_buffer(self.layout.size, dtype)

    @property
    def nbytes(self) -> int:
        """Memory held: the selector's (:attr:`TopM.nbytes`); the model buffer is shared, not counted."""
        return self.selector.nbytes

    def task_part(self, keep: float) -> SparseDelta:
        """The sparse task-specific part at ``keep`` percent (values + flat indices; see ``SparseDelta``)."""
        return self.selector.select(keep)

    def model(self, keep: float, *, out: Optional[torch.Tensor] = None) -> StateDict:
        """The reconstructed tuned state dict at ``keep`` percent, in one streaming pass (:meth:`TopM.apply`).

        Written into ``out`` (a flat work buffer) when given, else into the preallocated buffer every task of this
        size shares, which is reused once the previous model's tensors are all released (otherwise a new buffer is
        taken), so a model that is kept never changes under its holder."""
        return self.selector.apply(self.shared, keep, out=out if out is not None else self.buffer.get())

    def sweep(self, keeps: Iterable[float], *, reuse_buffer: bool = False) -> Iterator[tuple[float, StateDict]]:
        """``(m, model)`` for every m after one preparation. With ``reuse_buffer`` every model is written into the
        same flat buffer even while an earlier one is held: consume each before asking for the next."""
        keeps = [check_keep(m) for m in keeps]
        below = [m for m in keeps if m < 100]
        if below and self.selector.count == "round":  # one preparation serves every m
            self.selector.prepare(max(below))
        buf = None
        for m in keeps:
            if reuse_buffer and buf is None:
                buf = torch.empty(self.layout.size, dtype=self.selector.vector.dtype)
            yield m, self.model(m, out=buf)


def shared_model(base: StateDict, finetuned: Sequence[StateDict], mode: str, *, merge: str = "task_arithmetic",
                 params: Optional[Mapping[str, Any]] = None, context: Optional[MergeContext] = None,
                 on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """theta_0 (Post-Pruning) or the merged theta_star (PERU-FFT) over the fine-tuned keys."""
    if mode not in MODES:
        raise PeruError(f"Unknown reuse mode {mode!r}; use one of: {', '.join(MODES)}.")
    if mode == "post-pruning":
        return {k: base[k] for k in finetuned[0]} if finetuned else {}
    return get_method(merge)(base, finetuned, context=context, on_progress=on_progress, device=device,
                             **dict(params or {}))


def post_pruning(base: StateDict, finetuned: StateDict, keep: float, scope: str = "global", *,
                 device: DeviceLike = None, count: str = "round") -> StateDict:
    """``theta_0 + top-m%(theta_t - theta_0)`` for one task (``count``: the top-m% convention, sparse.COUNTS)."""
    return SparseReuse(base, finetuned, scope, device=device, count=count).model(keep)


def peru_fft(merged: StateDict, finetuned: StateDict, keep: float, scope: str = "global", *,
             device: DeviceLike = None, count: str = "round") -> StateDict:
    """``theta_star + top-m%(theta_t - theta_star)`` for one task (``merged`` = theta_star; ``count``: the top-m%
    convention, sparse.COUNTS)."""
    return SparseReuse(merged, finetuned, scope, device=device, count=count).model(keep)


class LoraReuse:
    """One task's PERU-LoRA: the QR-core SVD of every LoRA product, computed once; any rank q is then a slice."""

    def __init__(self, base: Mapping[str, torch.Tensor], adapter: LoraAdapter, on_progress: Progress = None):
        self.base, self.adapter = base, adapter
        # the QR-core SVD of each product, once per task: a rank q then only maps the core's first q singular
        # vectors through the factors (O(out r q)), never a new QR or SVD
        self.svds: dict[str, ProductSVD] = adapter_svd(adapter, on_progress)
        dtypes = {base[k].dtype for k in self.svds}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        # one preallocated buffer for the updated targets (shared by every task and rank of this size), reused while
        # no earlier model is still held
        self.buffer = shared_buffer(lowrank_buffer_size(base, self.svds), work_dtype(dtype))

    def task_part(self, rank: int) -> dict[str, LowRank]:
        """Rank-``rank`` factors per target weight, in the base's dtype (what a user stores per task)."""
        return truncate_adapter(self.svds, rank, dtype=self._dtype())

    def kept_ranks(self, rank: int) -> dict[str, int]:
        """The rank each matrix keeps at q = ``rank``: ``min(q, its product's rank)`` (mixed-rank adapters are
        clamped per matrix)."""
        return {k: min(int(rank), s.rank) for k, s in self.svds.items()}

    def _dtype(self) -> torch.dtype:
        return next(iter(self.base[k].dtype for k in self.svds), torch.float32)

    def model(self, rank: int, *, keys: Optional[Iterable[str]] = None) -> StateDict:
        """``theta_0 + U_q S_q V_q^T`` on every target; other tensors are the base's (shared, not copied). The
        targets are written into this task's preallocated buffer (a new one while an earlier model is held)."""
        return apply_lowrank(self.base, truncate_adapter(self.svds, rank), keys=keys, out=self.buffer.get())

    def sweep(self, ranks: Iterable[int], *, keys: Optional[Iterable[str]] = None
              ) -> Iterator[tuple[int, StateDict]]:
        keys = list(keys) if keys is not None else None
        for q in ranks:
            yield q, self.model(q, keys=keys)


def peru_lora(base: StateDict, adapter: LoraAdapter, rank: int) -> StateDict:
    """``theta_0 + rank-q truncation of each LoRA product`` for one task."""
    return LoraReuse(base, adapter).model(rank)
