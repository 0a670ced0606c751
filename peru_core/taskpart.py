"""Task-part files: what a user stores per task beside the shared model, written, read back and sized exactly.

Three formats, all safetensors with a ``format`` metadata string (full description: ``docs/task_part_format.md``):

* ``peru-sparse-v2`` (Post-Pruning, PERU-FFT): ``values`` plus a packed bitmask ``mask`` or int ``indices``,
  whichever is smaller (:class:`peru_core.sparse.SparseDelta`);
* ``peru-lowrank-v1`` (PERU-LoRA): ``<key>.U``, ``<key>.S``, ``<key>.Vh`` per LoRA matrix, the rank-q truncation
  ``U diag(S) Vh`` of its product;
* ``peru-lora-v1`` (Single-Task on LoRA): ``<key>.lora_A`` and ``<key>.lora_B`` with the LoRA scale folded into B,
  so the update is ``B @ A``;
* ``peru-mask-v1`` (TALL masks, EMR-Merging): a packed bitmask ``mask`` over the tuned tensors (+ a float32
  ``rescaler`` for EMR), applied to the shared task vector of a ``peru-vector-v1`` file (:mod:`peru_core.partreuse`).

``*_bytes`` functions give the exact file size without writing the file
(:func:`peru_core.accounting.safetensors_bytes`); :func:`read_task_part` reconstructs the part, and
:meth:`TaskPart.apply` the task's model from the shared one.
PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from peru_core.accounting import safetensors_bytes
from peru_core.errors import PeruError
from peru_core.lowrank import LowRank, apply_lowrank
from peru_core.partreuse import MaskedParts, apply_delta, unpack_mask
from peru_core.sparse import FORMAT as SPARSE, SparseDelta, part_entries, part_metadata
from peru_core.statedict import Layout, flatten
from peru_core.types import StateDict

LOWRANK = "peru-lowrank-v1"
LORA = "peru-lora-v1"
MASK = "peru-mask-v1"
VECTOR = "peru-vector-v1"
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


# --- masks on a shared task vector (TALL masks, EMR-Merging) -----------------------------------------------------
def _mask_metadata(layout: Layout, method: str, metadata: Optional[Mapping[str, str]]) -> dict[str, str]:
    return {**(metadata or {}), "format": MASK, "method": method, "layout": json.dumps(layout.to_json())}


def mask_part(parts: MaskedParts, task: int, layout: Layout, method: str, rescaled: bool,
              metadata: Optional[Mapping[str, str]] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Task ``task``'s ``mask`` (U8, ``ceil(d / 8)`` bytes, numpy.packbits order) and, when ``rescaled``, its
    ``rescaler`` (F32, shape [1]); ``layout`` (the tuned tensors with their stored dtypes) goes in the metadata."""
    tensors = {"mask": torch.from_numpy(parts.masks[task].copy())}
    if rescaled:
        tensors["rescaler"] = torch.tensor([parts.rescalers[task]], dtype=torch.float32)
    return tensors, _mask_metadata(layout, method, metadata)


def mask_part_bytes(layout: Layout, method: str, rescaled: bool, metadata: Optional[Mapping[str, str]] = None
                    ) -> int:
    """Size of :func:`mask_part`'s file (the same for every task: it depends on d, not on the mask)."""
    entries = [("mask", torch.uint8, (math.ceil(layout.size / 8),))]
    entries += [("rescaler", torch.float32, (1,))] if rescaled else []
    return safetensors_bytes(entries, _mask_metadata(layout, method, metadata))


def vector_file(parts: MaskedParts, dtypes: Dtypes, method: str, metadata: Optional[Mapping[str, str]] = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The shared task vector (tau_MTL for TALL, tau_uni for EMR) per tuned tensor, in the stored dtypes."""
    out = {k: parts.vector[s:e].view(parts.layout.shapes[i]).to(_dtype(dtypes, k)).contiguous()
           for i, (k, s, e) in enumerate(parts.layout.spans())}
    return out, {**(metadata or {}), "format": VECTOR, "method": method}


def vector_file_bytes(layout: Layout, dtypes: Dtypes, method: str, metadata: Optional[Mapping[str, str]] = None
                      ) -> int:
    """Size of :func:`vector_file`'s file."""
    return safetensors_bytes([(k, _dtype(dtypes, k), layout.shapes[i]) for i, k in enumerate(layout.keys)],
                             {**(metadata or {}), "format": VECTOR, "method": method})


@dataclass(frozen=True, eq=False)
class MaskPart:
    """A ``peru-mask-v1`` part read back: packed bits over ``layout`` and the rescaler (1 when none is stored)."""

    layout: Layout
    bits: torch.Tensor  # uint8, packed
    rescaler: float

    def mask(self) -> torch.Tensor:
        return unpack_mask(self.bits.numpy(), self.layout.size)

    def apply(self, shared: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]) -> StateDict:
        """``shared + rescaler * (mask o vector)`` over the layout's keys (float32 arithmetic)."""
        flat = flatten(vector, self.layout, dtype=torch.float32)
        return apply_delta(shared, flat * self.mask() * torch.tensor(self.rescaler, dtype=torch.float32),
                           self.layout)


# --- reading ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TaskPart:
    """A task part read back: ``sparse`` (a SparseDelta) or ``factors`` (key -> LowRank; plain LoRA as
    ``B diag(1) A``)."""

    format: str
    metadata: dict[str, str]
    sparse: Optional[SparseDelta] = None
    factors: Optional[dict[str, LowRank]] = None
    masked: Optional[MaskPart] = None

    def apply(self, shared: Mapping[str, torch.Tensor],
              vector: Optional[Mapping[str, torch.Tensor]] = None) -> StateDict:
        """The task's model: ``shared`` plus this part, in ``shared``'s dtypes. A ``peru-mask-v1`` part also needs
        ``vector``, the shared task vector (``shared_vector.safetensors``)."""
        if self.masked is not None:
            if vector is None:
                raise PeruError("A TALL / EMR task part masks the shared task vector; pass vector= the tensors of "
                                "shared_vector.safetensors.")
            return self.masked.apply(shared, vector)
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
    if fmt == MASK:
        if "mask" not in tensors or "layout" not in meta:
            raise PeruError("This mask task part is corrupt (no mask or layout); export it again.")
        rescaler = float(tensors["rescaler"].reshape(-1)[0]) if "rescaler" in tensors else 1.0
        return TaskPart(fmt, meta, masked=MaskPart(Layout.from_json(json.loads(meta["layout"])), tensors["mask"],
                                                   rescaler))
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


__all__ = ["LORA", "LOWRANK", "MASK", "SPARSE", "VECTOR", "MaskPart", "TaskPart", "lora_part", "lora_part_bytes",
           "lowrank_part", "lowrank_part_bytes", "mask_part", "mask_part_bytes", "parse_task_part",
           "read_task_part", "sparse_part", "sparse_part_bytes", "vector_file", "vector_file_bytes"]
