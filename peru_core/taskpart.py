"""Task-part files: what a user stores per task beside the shared model, written, read back and sized exactly.

Three formats, all safetensors with a ``format`` metadata string (full description: ``docs/task_part_format.md``):

* ``peru-sparse-v2`` (Post-Pruning, PERU-FFT): ``values`` plus a packed bitmask ``mask`` or int ``indices``,
  whichever is smaller (:class:`peru_core.sparse.SparseDelta`);
* ``peru-lowrank-v1`` (PERU-LoRA): ``<key>.U``, ``<key>.S``, ``<key>.Vh`` per LoRA matrix, the rank-q truncation
  ``U diag(S) Vh`` of its product;
* ``peru-lora-v1`` (Single-Task on LoRA): ``<key>.lora_A`` and ``<key>.lora_B`` with the LoRA scale folded into B,
  so the update is ``B @ A``.

``*_bytes`` functions give the exact file size without writing the file
(:func:`peru_core.accounting.safetensors_bytes`); :func:`read_task_part` reconstructs the part, and
:meth:`TaskPart.apply` the task's model from the shared one.
PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from peru_core.accounting import safetensors_bytes
from peru_core.errors import PeruError
from peru_core.lowrank import LowRank, apply_lowrank
from peru_core.sparse import FORMAT as SPARSE, SparseDelta, part_entries, part_metadata
from peru_core.statedict import Layout
from peru_core.types import StateDict

LOWRANK = "peru-lowrank-v1"
LORA = "peru-lora-v1"
Dtypes = Union[torch.dtype, Mapping[str, torch.dtype]]


def _dtype(dtypes: Dtypes, key: str) -> torch.dtype:
    return dtypes if isinstance(dtypes, torch.dtype) else dtypes[key]


# --- sparse (Post-Pruning / PERU-FFT) -----------------------------------------------------------------------------
def sparse_part(delta: SparseDelta, dtype: torch.dtype, metadata: Optional[Mapping[str, str]] = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a sparse part with values in ``dtype``; ``metadata`` is added (e.g. the spec)."""
    tensors, meta = delta.to_tensors(dtype)
    return tensors, {**(metadata or {}), **meta}


def sparse_part_bytes(layout: Layout, nnz: int, keep: float, scope: str, dtype: torch.dtype,
                      metadata: Optional[Mapping[str, str]] = None) -> int:
    """Size of the file :func:`sparse_part` writes for ``nnz`` kept values of ``layout``."""
    return safetensors_bytes(part_entries(layout.size, nnz, dtype),
                             {**(metadata or {}), **part_metadata(layout, nnz, keep, scope)})


# --- low-rank (PERU-LoRA) -----------------------------------------------------------------------------------------
def lowrank_part(parts: Mapping[str, LowRank], dtypes: Dtypes, rank: int,
                 metadata: Optional[Mapping[str, str]] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``<key>.U`` (out x q), ``<key>.S`` (q), ``<key>.Vh`` (q x in) per matrix, in the key's stored dtype;
    ``rank`` is the q asked for (a matrix of lower rank keeps all it has)."""
    out: dict[str, torch.Tensor] = {}
    for k, lr in parts.items():
        dt = _dtype(dtypes, k)
        out[f"{k}.U"], out[f"{k}.S"], out[f"{k}.Vh"] = (t.to(dt).contiguous() for t in (lr.U, lr.S, lr.Vh))
    return out, {**(metadata or {}), "format": LOWRANK, "rank": str(int(rank))}


def lowrank_part_bytes(shapes: Mapping[str, tuple[int, int, int]], dtypes: Dtypes, rank: int,
                       metadata: Optional[Mapping[str, str]] = None) -> int:
    """Size of :func:`lowrank_part`'s file; ``shapes[key] = (d_out, d_in, q_kept)``."""
    entries = []
    for k, (o, i, q) in shapes.items():
        dt = _dtype(dtypes, k)
        entries += [(f"{k}.U", dt, (o, q)), (f"{k}.S", dt, (q,)), (f"{k}.Vh", dt, (q, i))]
    return safetensors_bytes(entries, {**(metadata or {}), "format": LOWRANK, "rank": str(int(rank))})


# --- plain LoRA (Single-Task on adapters) -------------------------------------------------------------------------
def lora_part(adapter: Mapping[str, Any], dtypes: Dtypes, metadata: Optional[Mapping[str, str]] = None
              ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``<key>.lora_A`` (r x in) and ``<key>.lora_B`` (out x r, times the LoRA scale) per target weight of
    ``adapter`` (``key -> LoraFactors``), in the key's stored dtype."""
    out: dict[str, torch.Tensor] = {}
    for k, f in adapter.items():
        dt = _dtype(dtypes, k)
        out[f"{k}.lora_A"] = f.A.to(dt).contiguous()
        out[f"{k}.lora_B"] = (f.B.double() * f.scale).to(dt).contiguous()
    return out, {**(metadata or {}), "format": LORA}


def lora_part_bytes(adapter: Mapping[str, Any], dtypes: Dtypes, metadata: Optional[Mapping[str, str]] = None
                    ) -> int:
    """Size of :func:`lora_part`'s file."""
    entries = []
    for k, f in adapter.items():
        dt = _dtype(dtypes, k)
        entries += [(f"{k}.lora_A", dt, (f.rank, f.shape[1])), (f"{k}.lora_B", dt, (f.shape[0], f.rank))]
    return safetensors_bytes(entries, {**(metadata or {}), "format": LORA})


# --- reading ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TaskPart:
    """A task part read back: ``sparse`` (a SparseDelta) or ``factors`` (key -> LowRank; plain LoRA as
    ``B diag(1) A``)."""

    format: str
    metadata: dict[str, str]
    sparse: Optional[SparseDelta] = None
    factors: Optional[dict[str, LowRank]] = None

    def apply(self, shared: Mapping[str, torch.Tensor]) -> StateDict:
        """The task's model: ``shared`` plus this part, in ``shared``'s dtypes."""
        if self.sparse is not None:
            return self.sparse.apply(shared)
        return apply_lowrank(shared, self.factors or {})


def _keys(tensors: Mapping[str, torch.Tensor], suffix: str) -> list[str]:
    return [k[: -len(suffix)] for k in tensors if k.endswith(suffix)]


def parse_task_part(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> TaskPart:
    """A :class:`TaskPart` from a file's tensors and metadata strings."""
    meta = dict(metadata)
    fmt = meta.get("format", "")
    if fmt.startswith("peru-sparse"):
        return TaskPart(fmt, meta, sparse=SparseDelta.from_tensors(tensors, meta))
    if fmt == LOWRANK:
        return TaskPart(fmt, meta, factors={k: LowRank(tensors[f"{k}.U"], tensors[f"{k}.S"], tensors[f"{k}.Vh"])
                                            for k in _keys(tensors, ".S")})
    if fmt == LORA:
        factors = {}
        for k in _keys(tensors, ".lora_A"):
            A, B = tensors[f"{k}.lora_A"], tensors[f"{k}.lora_B"]
            factors[k] = LowRank(B, torch.ones(A.shape[0], dtype=A.dtype), A)
        return TaskPart(fmt, meta, factors=factors)
    raise PeruError("This file is not a PERU task part (no known 'format' in its metadata); download it again "
                    "from the Merge lab or write it with `python -m peru_core reuse` / `lora`.")


def read_task_part(src: Union[str, bytes, os.PathLike]) -> TaskPart:
    """Read a task-part file (a path or its bytes) written by the Merge lab or the CLI."""
    from peru_core.io import load_metadata, load_state_dict

    tensors = load_state_dict(src, name="the task part")  # checks the header first (pickles, truncation)
    if isinstance(src, (bytes, bytearray)):
        n = int.from_bytes(bytes(src[:8]), "little")
        meta = json.loads(bytes(src[8:8 + n])).get("__metadata__") or {}
    else:
        meta = load_metadata(src)
    return parse_task_part(tensors, meta)


__all__ = ["LORA", "LOWRANK", "SPARSE", "TaskPart", "lora_part", "lora_part_bytes", "lowrank_part",
           "lowrank_part_bytes", "parse_task_part", "read_task_part", "sparse_part", "sparse_part_bytes"]
