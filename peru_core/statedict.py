"""Arithmetic on state dicts: task vectors, key checks, and a flat layout for whole-vector operations.

Task vectors follow the task-arithmetic convention ``v_t = theta_t - theta_0`` over the keys a fine-tuned checkpoint
holds (a zoo's checkpoints may hold only the tuned part of the model). PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from peru_core.device import one_thread_each
from peru_core.errors import PeruError
from peru_core.types import StateDict, report

# Elements per chunk of the copying passes (flatten, differences, candidate scans): amortises Python overhead.
CHUNK = 1 << 20
# Elements per chunk of the fused merges (weighted sums, TIES): their few work arrays stay in a core's cache.
FUSED_CHUNK = 1 << 18


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 stays float64, every other float type computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tuned_keys(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    """The keys every fine-tuned state dict holds (in the first one's order), checked against ``base``.

    A cheap guard for the merge functions; full validation with one-sentence errors lives in :mod:`peru_core.io`.
    """
    if not finetuned:
        raise PeruError("No fine-tuned models were given; pass at least one task.")
    keys = list(finetuned[0].keys())
    if not keys:
        raise PeruError("The first fine-tuned checkpoint holds no tensors; pass a real checkpoint.")
    for i, sd in enumerate(finetuned):
        if set(sd.keys()) != set(keys):
            raise PeruError(f"Fine-tuned checkpoint #{i + 1} holds different keys than #1; all tasks must tune the "
                            "same tensors.")
        for k in keys:
            if k not in base:
                raise PeruError(f"Fine-tuned key {k!r} is not in the base model; check that the checkpoints belong "
                                "to this base.")
            if sd[k].shape != base[k].shape:
                raise PeruError(f"Tensor {k!r} has shape {tuple(sd[k].shape)} in fine-tuned checkpoint #{i + 1} "
                                f"but {tuple(base[k].shape)} in the base; use checkpoints of the same architecture.")
    return keys


def task_vector(finetuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> StateDict:
    """``theta_t - theta_0`` over the fine-tuned keys, in the work dtype (float32 unless float64)."""
    return {k: v.to(work_dtype(v.dtype)) - base[k].to(work_dtype(v.dtype)) for k, v in finetuned.items()}


def numel(sd: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    """Number of values in ``sd`` (only keys starting with ``prefix``)."""
    return sum(t.numel() for k, t in sd.items() if k.startswith(prefix))


def nbytes(sd: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    """Bytes of ``sd`` in its stored dtypes (only keys starting with ``prefix``)."""
    return sum(t.numel() * t.element_size() for k, t in sd.items() if k.startswith(prefix))


@dataclass(frozen=True)
class Layout:
    """How a state dict maps onto one flat vector: key order, shapes, dtypes and offsets."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    offsets: tuple[int, ...]  # len(keys) + 1; offsets[-1] is the total size

    @classmethod
    def of(cls, sd: Mapping[str, torch.Tensor], keys: Optional[Sequence[str]] = None) -> "Layout":
        keys = tuple(sd.keys() if keys is None else keys)
        sizes = [sd[k].numel() for k in keys]
        return cls(keys, tuple(tuple(sd[k].shape) for k in keys), tuple(sd[k].dtype for k in keys),
                   tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])))

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def spans(self) -> Iterator[tuple[str, int, int]]:
        """``(key, start, stop)`` for every tensor."""
        for i, k in enumerate(self.keys):
            yield k, self.offsets[i], self.offsets[i + 1]

    def to_json(self) -> dict:
        return {"keys": list(self.keys), "shapes": [list(s) for s in self.shapes],
                "dtypes": [str(d).removeprefix("torch.") for d in self.dtypes]}

    @classmethod
    def from_json(cls, obj: dict) -> "Layout":
        shapes = [tuple(int(x) for x in s) for s in obj["shapes"]]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        return cls(tuple(obj["keys"]), tuple(shapes), tuple(getattr(torch, d) for d in obj["dtypes"]),
                   tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])))


def flatten(sd: Mapping[str, torch.Tensor], layout: Optional[Layout] = None, *, dtype: Optional[torch.dtype] = None,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Concatenate the tensors of ``sd`` (in ``layout`` order) into one 1-D tensor, optionally into ``out``."""
    layout = layout or Layout.of(sd)
    if out is None:
        dtype = dtype or work_dtype(layout.dtypes[0] if layout.dtypes else torch.float32)
        out = torch.empty(layout.size, dtype=dtype)
    for k, a, b in layout.spans():
        out[a:b].copy_(sd[k].reshape(-1))
    return out


def flat_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], layout: Layout, *,
                    out: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``flatten(a) - flatten(b)`` written straight into one buffer (no per-tensor temporaries)."""
    if out is None:
        out = torch.empty(layout.size, dtype=dtype)
    for k, s, e in layout.spans():
        x, y = a[k].reshape(-1), b[k].reshape(-1)
        if x.dtype == out.dtype and y.dtype == out.dtype:
            torch.sub(x, y, out=out[s:e])
        else:
            out[s:e].copy_(x).sub_(y.to(out.dtype))
    return out


def unflatten(vec: torch.Tensor, layout: Layout, *, cast: bool = True) -> StateDict:
    """Split a flat vector back into tensors (views when no cast is needed)."""
    out: StateDict = {}
    for i, (k, s, e) in enumerate(layout.spans()):
        t = vec[s:e].view(layout.shapes[i])
        out[k] = t.to(layout.dtypes[i]) if cast and t.dtype != layout.dtypes[i] else t
    return out


def _storage_uses(t: torch.Tensor) -> Optional[int]:
    """How many tensors (views, numpy arrays) hold ``t``'s storage; None where torch does not say."""
    try:
        return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))
    except (AttributeError, RuntimeError):
        return None


class ReusableBuffer:
    """A flat host buffer handed out again only once nothing refers to what it was last handed out as.

    Why: a sweep point (a new m for a task) rewrites a whole model; writing it into the same, already mapped memory
    costs a copy, while a fresh allocation also page-faults every page. The buffer is reused only when no view of
    it (no tensor, no numpy array) is alive any more, so a caller that keeps a model never sees it change: a new
    buffer is allocated instead (and the kept one lives as long as its views).
    """

    def __init__(self, n: int, dtype: torch.dtype = torch.float32):
        self.n, self.dtype = int(n), dtype
        self._buf: Optional[torch.Tensor] = None
        self._idle: Optional[int] = None  # the storage's use count when only this object holds it
        self._lock = threading.Lock()  # two threads never both see it idle

    def get(self) -> torch.Tensor:
        """A view of the buffer (uninitialised contents), or of a new one while the last is still in use (a view,
        so that even the returned tensor itself counts as a use)."""
        with self._lock:
            if self._buf is None or self._idle is None or _storage_uses(self._buf) != self._idle:
                self._buf = torch.empty(self.n, dtype=self.dtype)
                self._idle = _storage_uses(self._buf)
            return self._buf.view(-1)

    @property
    def nbytes(self) -> int:
        return 0 if self._buf is None else self.n * self._buf.element_size()


_SHARED: "OrderedDict[tuple[int, torch.dtype], ReusableBuffer]" = OrderedDict()
_SHARED_LOCK = threading.Lock()
SHARED_BUFFERS = 3  # sizes kept at once (e.g. a zoo's sparse models, its LoRA targets, one more zoo)


def shared_buffer(n: int, dtype: torch.dtype = torch.float32) -> ReusableBuffer:
    """The process-wide :class:`ReusableBuffer` of ``n`` values of ``dtype``: every task and every setting of a zoo
    writes its model into the same memory while models are evaluated one at a time (the last few sizes are kept;
    an older one is freed once its views are)."""
    key = (int(n), dtype)
    with _SHARED_LOCK:
        buf = _SHARED.get(key)
        if buf is None:
            buf = _SHARED[key] = ReusableBuffer(n, dtype)
        _SHARED.move_to_end(key)
        while len(_SHARED) > SHARED_BUFFERS:
            _SHARED.popitem(last=False)
        return buf


def weighted_sum(base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]],
                 base_weight: float, task_weight: float, keys: Sequence[str], *,
                 on_progress=None, message: str = "merging") -> StateDict:
    """``base_weight * theta_0 + task_weight * sum_t theta_t`` over ``keys``, in one memory-bound pass.

    Works chunk by chunk (each chunk stays in cache while the T inputs stream through), with one preallocated
    accumulator and in-place ``add_``: every input is read once and the output written once; the first two inputs
    are summed straight into the accumulator (one pass fewer than copy + add, the same values). On the CPU one tensor
    per core (:func:`peru_core.device.one_thread_each`): elementwise, so the same values on any thread count.
    """
    keys = list(keys)
    on_cpu = all(base[k].device.type == "cpu" and all(sd[k].device.type == "cpu" for sd in finetuned) for k in keys)
    mapped = (one_thread_each if on_cpu else map)(
        lambda k: _weighted_sum_one(base[k], [sd[k] for sd in finetuned], base_weight, task_weight), keys)
    out: StateDict = {}
    for i, (k, v) in enumerate(zip(keys, mapped)):
        out[k] = v
        report(on_progress, (i + 1) / len(keys), message)
    return out


def _weighted_sum_one(base: torch.Tensor, finetuned: Sequence[torch.Tensor], base_weight: float,
                      task_weight: float) -> torch.Tensor:
    """:func:`weighted_sum` of one tensor."""
    block = FUSED_CHUNK
    wd = work_dtype(base.dtype)
    acc = torch.empty(min(block, base.numel()), dtype=wd, device=base.device)  # this call's (thread's) own
    b_all = base.reshape(-1)
    fl = [f.reshape(-1) for f in finetuned]
    # one output per tensor, not one flat buffer: tensor-sized blocks are recycled by the allocator across calls,
    # while a fresh model-sized buffer page-faults on every call (measured: the whole merge 2x slower)
    res = torch.empty(b_all.numel(), dtype=wd, device=base.device)
    for s in range(0, b_all.numel(), block):
        e = min(s + block, b_all.numel())
        a = acc[: e - s]
        if len(fl) > 1 and fl[0].dtype == fl[1].dtype == wd:  # summed straight into the accumulator: no copy
            # pass, same values (16-bit inputs must be widened first, or the add would round in 16 bits)
            torch.add(fl[0][s:e], fl[1][s:e], out=a)
            rest = fl[2:]
        else:
            a.copy_(fl[0][s:e])
            rest = fl[1:]
        for f in rest:
            a.add_(f[s:e])
        r = res[s:e]
        if base_weight == 0.0:
            torch.mul(a, task_weight, out=r)
        else:
            torch.mul(b_all[s:e], base_weight, out=r)
            r.add_(a, alpha=task_weight)
    return res.view(base.shape) if wd == base.dtype else res.view(base.shape).to(base.dtype)
