"""What each way of reusing T fine-tuned models costs: the paper's parameter count and the bytes of real files.

Paper count (PERU, https://arxiv.org/abs/2310.01886, Tables 1-3): shared parameters + T x task-specific parameters,
with m% of d per task for sparse parts and ``q (d_out + d_in + 1)`` per LoRA matrix for PERU-LoRA. Single-Task
serves no shared model: T whole fine-tuned models, T x d.

Bytes are file sizes: every byte figure is the exact size of the safetensors file the project writes for it (the
shared model, each task part, each single-task model; header included), computed from names, dtypes, shapes and
metadata by :func:`safetensors_bytes`, which reproduces safetensors' own serialisation (tests compare it with
``os.path.getsize`` of written files). The task-part formats are in ``docs/task_part_format.md``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch

DTYPE_BYTES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}

# safetensors' dtype names, in the order its writer places tensors (larger alignment first, then by name)
ST_DTYPES: dict[torch.dtype, str] = {
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32", torch.uint32: "U32",
    torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint16: "U16", torch.int16: "I16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ORDER = {d: i for i, d in enumerate(ST_DTYPES)}
_BY_NAME = {n: d for d, n in ST_DTYPES.items()}

Entry = tuple[str, torch.dtype, Sequence[int]]  # (tensor name, dtype, shape) of one tensor in a file


def dtype_bytes(dtype: torch.dtype) -> int:
    return DTYPE_BYTES.get(dtype, torch.empty(0, dtype=dtype).element_size())


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a safetensors header dtype name (``"F16"`` -> ``torch.float16``)."""
    return _BY_NAME[name]


def safetensors_bytes(entries: Iterable[Entry], metadata: Optional[Mapping[str, str]]) -> int:
    """The exact size of the safetensors file holding ``entries`` and ``metadata``: 8 bytes of header length, the
    JSON header padded with spaces to a multiple of 8, then the data. ``metadata=None`` writes no ``__metadata__``
    (``{}`` writes an empty one, as :func:`peru_core.io.save_state_dict` does)."""
    ordered = sorted(entries, key=lambda e: (_ORDER[e[1]], e[0]))
    header: dict = {} if metadata is None else {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for name, dtype, shape in ordered:
        n = math.prod(int(s) for s in shape) * dtype_bytes(dtype)
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": [int(s) for s in shape], "data_offsets": [offset,
                                                                                                      offset + n]}
        offset += n
    # safetensors writes compact JSON (serde_json: the same escapes as Python's with ensure_ascii=False)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + -(-len(text) // 8) * 8 + offset


def state_dict_entries(sd: Mapping[str, torch.Tensor],
                       dtypes: Union[None, torch.dtype, Mapping[str, torch.dtype]] = None) -> list[Entry]:
    """Entries of a state dict as it will be written: floats cast to ``dtypes`` (one dtype, or one per key)."""
    def dt(k: str, t: torch.Tensor) -> torch.dtype:
        if dtypes is None or not t.is_floating_point():
            return t.dtype
        return dtypes if isinstance(dtypes, torch.dtype) else dtypes.get(k, t.dtype)

    return [(k, dt(k, t), tuple(t.shape)) for k, t in sd.items()]


def lowrank_params(shapes: Iterable[tuple[int, ...]], rank: int) -> int:
    """``sum q (d_out + d_in + 1)`` over the matrices. A shape is ``(d_out, d_in)`` or ``(d_out, d_in, r)``; q is
    capped at min(d_out, d_in, r) because a rank-r LoRA product has no more to keep."""
    return sum(min(rank, *s) * (s[0] + s[1] + 1) for s in shapes)


@dataclass(frozen=True)
class Accounting:
    """Cost of one reuse setting for T tasks; ``*_params`` in the paper's count, ``*_bytes`` the sizes of the
    files written for it (``shared_bytes`` 0 when no shared model is served, ``task_bytes`` 0 without task parts)."""

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
    """One merged (or the pre-trained) model serves every task: no task-specific part."""
    return Accounting(method, tasks, shared_params, (0,) * tasks, shared_bytes, (0,) * tasks)


def reuse_accounting(method: str, shared_params: int, shared_bytes: int, task_params: Sequence[int],
                     task_bytes: Sequence[int]) -> Accounting:
    """A shared model plus one task part per task (Post-Pruning, PERU-FFT, PERU-LoRA, plain LoRA)."""
    return Accounting(method, len(task_params), shared_params, tuple(int(p) for p in task_params), shared_bytes,
                      tuple(int(b) for b in task_bytes))


def full_accounting(d: int, model_bytes: Sequence[int]) -> Accounting:
    """Single-task models: T whole fine-tuned tuned parts of d values each and no shared model (the upper
    reference); ``model_bytes[t]`` is the size of task t's model file."""
    return Accounting("single-task", len(model_bytes), 0, (d,) * len(model_bytes), 0,
                      tuple(int(b) for b in model_bytes))
