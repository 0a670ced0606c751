"""Where a task's part lives: kept entries per tensor of a top-m% part, kept rank per matrix of a PERU-LoRA part.

PERU-FFT and Post-Pruning keep the top-m% entries of ``u_t`` / ``v_t`` over the whole flattened vector (global scope,
the paper's choice), so the budget is not spread evenly: a tensor whose entries moved more keeps more of them.
Counting the part's flat indices per layout span shows how the budget distributes across layers. PERU-LoRA keeps
``min(q, rank of B A)`` singular directions per matrix. PERU: https://arxiv.org/abs/2310.01886 (Algorithms 1, 2).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from peru_core.layer_names import readable
from peru_core.sparse import SparseDelta
from peru_core.spec import Mode, RunSpec
from peru_core.statedict import Layout

COLUMNS = ["key", "layer", "kept", "size", "fraction", "share"]


def kept_per_tensor(layout: Layout, indices: np.ndarray) -> np.ndarray:
    """How many of the flat ``indices`` fall in each tensor of ``layout`` (in its key order)."""
    offsets = np.asarray(layout.offsets, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= layout.size):
        raise ValueError("indices outside the layout")
    # tensor i holds positions [offsets[i], offsets[i+1]); searchsorted finds i for every index at once
    which = np.searchsorted(offsets, indices, side="right") - 1
    return np.bincount(which, minlength=len(layout.keys)).astype(np.int64)


def sparse_layout(part: SparseDelta, prefix: str = "") -> pd.DataFrame:
    """One row per tensor: kept entries, tensor size, ``fraction`` kept of the tensor and ``share`` of the part."""
    return index_layout(part.layout, part.indices, prefix)


def index_layout(layout: Layout, indices: np.ndarray, prefix: str = "") -> pd.DataFrame:
    """:func:`sparse_layout` for any set of flat positions (a top-m% part, or the ones of a TALL / EMR mask)."""
    kept = kept_per_tensor(layout, indices)
    sizes = np.diff(np.asarray(layout.offsets, dtype=np.int64))
    total = max(int(kept.sum()), 1)
    return pd.DataFrame({"key": layout.keys, "layer": [readable(k, prefix) for k in layout.keys],
                         "kept": kept, "size": sizes, "fraction": kept / np.maximum(sizes, 1),
                         "share": kept / total}, columns=COLUMNS)


def rank_layout(kept_shapes: Mapping[str, tuple[int, int, int]], rank: Mapping[str, int], prefix: str = ""
                ) -> pd.DataFrame:
    """One row per LoRA matrix from ``key -> (d_out, d_in, q kept)``: kept rank, the adapter's rank ``rank[key]``,
    values kept ``q (d_out + d_in + 1)`` and their ``share`` of the part (``fraction`` = q / r)."""
    keys = list(kept_shapes)
    q = np.array([kept_shapes[k][2] for k in keys], dtype=np.int64)
    values = np.array([kept_shapes[k][2] * (kept_shapes[k][0] + kept_shapes[k][1] + 1) for k in keys], dtype=np.int64)
    r = np.array([rank[k] for k in keys], dtype=np.int64)
    return pd.DataFrame({"key": keys, "layer": [readable(k, prefix) for k in keys], "kept": q, "size": r,
                         "fraction": q / np.maximum(r, 1), "share": values / max(int(values.sum()), 1),
                         "values": values})


def task_part_layout(runtime: Any, spec: RunSpec, task: str) -> pd.DataFrame:
    """The layout of ``task``'s part under ``spec`` (Post-Pruning, PERU-FFT or PERU-LoRA) on a zoo runtime."""
    from peru_core import experiments  # local: the runtime machinery is only needed here

    i = runtime.zoo.task_names.index(runtime.spec(task).name)
    if spec.mode in (Mode.POST_PRUNING, Mode.PERU_FFT):
        return sparse_layout(experiments._sparse(runtime, spec, i).task_part(spec.keep), runtime.prefix)
    if spec.mode.value in ("tall", "emr"):  # per-task masks over one shared vector: their density per layer
        parts = experiments._masked_parts(runtime, spec)
        return index_layout(parts.layout, np.flatnonzero(parts.mask(i).numpy()), runtime.prefix)
    if spec.mode is Mode.PERU_LORA:
        experiments.check_rank(runtime, spec)
        adapter = runtime.adapter(task, spec.source.value)
        return rank_layout(experiments._kept_shapes(runtime, spec, task), {k: f.rank for k, f in adapter.items()},
                           runtime.prefix)
    raise ValueError(f"{spec.mode.value} keeps no per-layer task part")
