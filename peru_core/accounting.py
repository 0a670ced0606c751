"""What each way of reusing T fine-tuned models costs: the paper's parameter count and honest bytes.

Paper count (PERU, https://arxiv.org/abs/2310.01886, Tables 1-3): shared parameters + T x task-specific parameters,
with m% of d per task for sparse parts and ``q (d_out + d_in + 1)`` per LoRA matrix for PERU-LoRA.

Honest bytes: values in the dtype actually stored, plus, for a sparse part, where the values go: a bitmask of
``ceil(d / 8)`` bytes or 4-byte indices, whichever is smaller. Low-rank factors need no indices.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch

DTYPE_BYTES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}


def dtype_bytes(dtype: torch.dtype) -> int:
    return DTYPE_BYTES.get(dtype, torch.empty(0, dtype=dtype).element_size())


def sparse_index_bytes(d: int, nnz: int) -> int:
    """Bytes to say where ``nnz`` of ``d`` values go: ``min(ceil(d / 8), 4 * nnz)`` (nothing for 0 or d)."""
    if nnz == 0 or nnz == d:
        return 0  # nothing kept, or a dense vector: positions are implicit
    return min(math.ceil(d / 8), 4 * nnz)


def sparse_bytes(d: int, nnz: int, value_bytes: int) -> int:
    """Bytes of one sparse task part: values plus the cheaper of bitmask and indices."""
    return nnz * value_bytes + sparse_index_bytes(d, nnz)


def lowrank_params(shapes: Iterable[tuple[int, ...]], rank: int) -> int:
    """``sum q (d_out + d_in + 1)`` over the matrices. A shape is ``(d_out, d_in)`` or ``(d_out, d_in, r)``; q is
    capped at min(d_out, d_in, r) because a rank-r LoRA product has no more to keep."""
    return sum(min(rank, *s) * (s[0] + s[1] + 1) for s in shapes)


@dataclass(frozen=True)
class Accounting:
    """Cost of one reuse setting for T tasks; ``*_params`` in the paper's count, ``*_bytes`` as stored."""

    method: str
    tasks: int
    shared_params: int
    task_params: tuple[int, ...]
    shared_bytes: int
    task_bytes: tuple[int, ...]

    @property
    def total_params(self) -> int:
        return self.shared_params + sum(self.task_params)

    @property
    def total_bytes(self) -> int:
        return self.shared_bytes + sum(self.task_bytes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(task_params=list(self.task_params), task_bytes=list(self.task_bytes),
                 total_params=self.total_params, total_bytes=self.total_bytes)
        return d


def merge_accounting(method: str, shared_params: int, shared_bytes: int, tasks: int) -> Accounting:
    """One merged model serves every task: no task-specific part."""
    return Accounting(method, tasks, shared_params, (0,) * tasks, shared_bytes, (0,) * tasks)


def sparse_accounting(method: str, shared_params: int, shared_bytes: int, d: int, nnz: Sequence[int],
                      value_bytes: int) -> Accounting:
    """Post-Pruning / PERU-FFT: a shared model plus ``nnz[t]`` of ``d`` values per task."""
    return Accounting(method, len(nnz), shared_params, tuple(int(n) for n in nnz), shared_bytes,
                      tuple(sparse_bytes(d, int(n), value_bytes) for n in nnz))


def lowrank_accounting(method: str, shared_params: int, shared_bytes: int,
                       shapes: Sequence[Sequence[tuple[int, ...]]], ranks: Sequence[int] | int,
                       value_bytes: int) -> Accounting:
    """PERU-LoRA (or plain LoRA with ``ranks`` = r): ``q (d_out + d_in + 1)`` values per matrix per task.

    ``shapes[t]`` lists the (d_out, d_in[, r]) of task t's matrices; ``ranks`` is one q for all or one per task.
    Plain LoRA stores ``r (d_out + d_in)``; the paper's count for PERU-LoRA stores U_q, S_q, V_q.
    """
    qs = [ranks] * len(shapes) if isinstance(ranks, int) else list(ranks)
    params = tuple(lowrank_params(s, q) for s, q in zip(shapes, qs))
    return Accounting(method, len(shapes), shared_params, params, shared_bytes,
                      tuple(p * value_bytes for p in params))


def full_accounting(shared_params: int, shared_bytes: int, d: int, tasks: int, value_bytes: int) -> Accounting:
    """Single-task models: every task stores its whole tuned part (the upper reference)."""
    return Accounting("single-task", tasks, shared_params, (d,) * tasks, shared_bytes, (d * value_bytes,) * tasks)
