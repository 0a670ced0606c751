"""Run specs on a zoo: build each task's model, evaluate it on held-out data, account for its cost, store the rows.

This is the one place where a :class:`~peru_core.spec.RunSpec` becomes numbers; the CLI ``sweep`` command and every
dashboard page go through it, so a result computed in one is found by the other in the results store.
Rows mirror the paper's tables (https://arxiv.org/abs/2310.01886, Table 1): per-task accuracy, #params, bytes.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional, Sequence

import pandas as pd
import torch
from safetensors.torch import save as st_save

from peru_core import accounting as acc
from peru_core.errors import PeruError
from peru_core.merging import get_method, list_methods
from peru_core.reuse import LoraReuse, SparseReuse, lowrank_to_tensors
from peru_core.sparse import keep_count
from peru_core.spec import Mode, RunSpec, Source
from peru_core.statedict import numel
from peru_core.store import ResultsStore
from peru_core.types import Progress, StateDict, report

# One computation at a time per process: two browser sessions never run two GPU jobs at once.
COMPUTE_LOCK = threading.Lock()
PAPER_KEEPS = (1.0, 5.0, 10.0, 20.0)
PAPER_RANKS = (1, 2, 4, 8, 16)
ROW_COLUMNS = ["spec_key", "label", "method", "mode", "source", "merge", "keep", "rank", "scope", "task",
               "accuracy", "params", "bytes", "task_params", "task_bytes", "cached"]


def _approx_bytes(value: Any) -> int:
    """Rough memory held by a memoised value: tensors of a state dict, or a reuse object's flat work vectors."""
    if isinstance(value, dict):
        return sum(t.numel() * t.element_size() for t in value.values() if isinstance(t, torch.Tensor))
    if isinstance(value, SparseReuse):
        return int(value.layout.size * 4 * 1.6)  # the flat difference plus the sorted top slice
    return 0


class _Memo:
    """Per-runtime LRU of expensive intermediates (merged models, prepared top-m selectors, LoRA SVDs), bounded by
    count and by bytes (``$PERU_CACHE_GB``, default 4) so a ViT-B/32-size zoo cannot fill the machine's memory."""

    def __init__(self, size: int = 24, max_bytes: Optional[int] = None) -> None:
        self.size, self.items = size, OrderedDict()
        self.max_bytes = max_bytes if max_bytes is not None else int(float(os.environ.get("PERU_CACHE_GB", 4)) * 2**30)
        self.lock = threading.RLock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key][0]
            value = make()
            self.items[key] = (value, _approx_bytes(value))
            # evict oldest first; the newest entry always stays, even alone over the budget
            while len(self.items) > 1 and (len(self.items) > self.size or
                                           sum(b for _, b in self.items.values()) > self.max_bytes):
                self.items.popitem(last=False)
            return value


def _memo(runtime: Any) -> _Memo:
    if not hasattr(runtime, "_peru_memo"):
        runtime._peru_memo = _Memo()
    return runtime._peru_memo


def zoo_key(runtime: Any) -> str:
    """The zoo's content hash (computed once per runtime): results are keyed by what the files hold."""
    return runtime.content_hash


def available_sources(runtime: Any) -> list[Source]:
    """Sources every task of the zoo has: full fine-tunes and/or LoRA adapters."""
    tasks = runtime.zoo.tasks
    return [s for s, ok in ((Source.FULL, all(t.finetuned for t in tasks)),
                            (Source.LORA, all(t.lora for t in tasks))) if ok]


def lora_rank(runtime: Any) -> int:
    """The largest LoRA rank over the zoo's adapters (the upper end of the q slider)."""
    return max(f.rank for t in runtime.zoo.task_names for f in runtime.adapter(t).values())


def _lora_model(runtime: Any, task: str) -> StateDict:
    """theta_0 + scale * B A on the adapter's targets: the LoRA fine-tune as a full tuned state dict."""
    def make() -> StateDict:
        base = runtime.base_state()
        out = dict(base)
        for key, f in runtime.adapter(task).items():  # targets were checked against the base when it was read
            out[key] = (base[key].float() + f.delta(torch.float32)).to(base[key].dtype)
        return out

    return _memo(runtime).get(("lora-model", task), make)


def source_model(runtime: Any, source: Source, task: int) -> StateDict:
    """Task ``task``'s fine-tuned tuned part, from its full fine-tune or its LoRA adapter merged in."""
    if source not in available_sources(runtime):
        raise PeruError(f"This zoo has no {source.value} fine-tunes for every task; pick the other source.")
    name = runtime.zoo.task_names[task]
    return runtime.finetuned(name) if source is Source.FULL else _lora_model(runtime, name)


def source_models(runtime: Any, source: Source) -> list[StateDict]:
    """Every task's fine-tuned tuned part (what a merge takes)."""
    return [source_model(runtime, source, i) for i in range(len(runtime.zoo.tasks))]


def merged_model(runtime: Any, spec: RunSpec, on_progress: Progress = None) -> StateDict:
    """theta_star of a MERGE or PERU-FFT spec (cached per runtime)."""
    method = get_method(spec.merge)

    def make() -> StateDict:
        context = None
        if method.needs:
            from peru_core.zoo.context import ZooContext

            context = ZooContext(runtime)
        return method(runtime.base_state(), source_models(runtime, spec.source), context=context,
                      on_progress=on_progress, device=runtime.device, **dict(spec.params))

    return _memo(runtime).get(("merged", spec.source, spec.merge, spec.params), make)


def _sparse(runtime: Any, spec: RunSpec, task_index: int) -> SparseReuse:
    """The prepared top-m% selector of one task (theta_0 or theta_star as the shared model); any m is then cheap."""
    fft = spec.mode is Mode.PERU_FFT
    shared_key = ("merged", spec.source, spec.merge, spec.params) if fft else "base"

    def make() -> SparseReuse:
        shared = merged_model(runtime, spec) if fft else runtime.base_state()
        return SparseReuse(shared, source_model(runtime, spec.source, task_index), spec.scope.value,
                           device=runtime.device)

    return _memo(runtime).get(("sparse", shared_key, spec.source, task_index, spec.scope), make)


def _lora_reuse(runtime: Any, task: str) -> LoraReuse:
    return _memo(runtime).get(("lora-reuse", task), lambda: LoraReuse(runtime.base_state(), runtime.adapter(task)))


def _value_bytes(runtime: Any) -> int:
    return acc.dtype_bytes(runtime.stored_dtype)


def _costs(runtime: Any, spec: RunSpec) -> acc.Accounting:
    """The paper's #params and honest bytes for ``spec`` (shared = the tuned part, e.g. the image encoder;
    the frozen text tower and heads are the same for every method and not counted)."""
    base = runtime.base_state()
    d, vb, T = numel(base), _value_bytes(runtime), len(runtime.zoo.tasks)
    name = spec.mode.value
    if spec.mode in (Mode.PRETRAINED, Mode.MERGE):
        return acc.merge_accounting(name, d, d * vb, T)
    if spec.mode is Mode.SINGLE_TASK and spec.source is Source.FULL:
        return acc.full_accounting(d, d * vb, d, T, vb)
    if spec.mode is Mode.SINGLE_TASK:  # plain LoRA stores A and B: r (d_out + d_in) per matrix
        p = [sum(f.rank * (f.shape[0] + f.shape[1]) for f in runtime.adapter(t).values())
             for t in runtime.zoo.task_names]
        return acc.Accounting(name, T, d, tuple(p), d * vb, tuple(x * vb for x in p))
    if spec.mode is Mode.PERU_LORA:
        shapes = [[(*f.shape, f.rank) for f in runtime.adapter(t).values()] for t in runtime.zoo.task_names]
        return acc.lowrank_accounting(name, d, d * vb, shapes, spec.rank, vb)
    if spec.scope.value == "global":
        nnz = keep_count(d, spec.keep)
    else:
        nnz = sum(keep_count(t.numel(), spec.keep) for t in base.values())
    return acc.sparse_accounting(name, d, d * vb, d, [nnz] * T, vb)


def task_model(runtime: Any, spec: RunSpec, task: str | int) -> StateDict:
    """The reconstructed tuned weights of one task under ``spec`` (what gets evaluated)."""
    names = runtime.zoo.task_names
    i = task if isinstance(task, int) else names.index(runtime.spec(task).name)
    name = names[i]
    if spec.mode is Mode.PRETRAINED:
        return runtime.base_state()
    if spec.mode is Mode.SINGLE_TASK:
        return source_model(runtime, spec.source, i)
    if spec.mode is Mode.MERGE:
        return merged_model(runtime, spec)
    if spec.mode in (Mode.POST_PRUNING, Mode.PERU_FFT):
        return _sparse(runtime, spec, i).model(spec.keep)
    if spec.mode is Mode.PERU_LORA:
        return _lora_reuse(runtime, name).model(spec.rank)
    raise PeruError(f"Unknown mode {spec.mode!r}.")


def _rows(runtime: Any, spec: RunSpec, accs: dict[str, float], cached: bool) -> pd.DataFrame:
    costs = _costs(runtime, spec)
    rows = []
    for i, t in enumerate(runtime.zoo.task_names):
        rows.append({
            "spec_key": spec.key(), "label": spec.label, "method": spec.method_label, "mode": spec.mode.value,
            "source": spec.source.value, "merge": spec.merge, "keep": spec.keep, "rank": spec.rank,
            "scope": spec.scope.value, "task": t, "accuracy": accs[t], "params": costs.total_params,
            "bytes": costs.total_bytes, "task_params": costs.task_params[i], "task_bytes": costs.task_bytes[i],
            "cached": cached})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def run_spec(runtime: Any, spec: RunSpec, store: Optional[ResultsStore] = None,
             on_progress: Progress = None) -> pd.DataFrame:
    """Per-task accuracy (held-out test sets) and costs of ``spec``: from the store when present, else computed
    and stored (all tasks of a spec in one transaction)."""
    names = runtime.zoo.task_names
    if store is not None:
        hit = store.get(zoo_key(runtime), spec.key(), names)
        if hit is not None:
            report(on_progress, 1.0, f"{spec.label}: from the results store")
            return _rows(runtime, spec, {r["task"]: r["accuracy"] for r in hit}, cached=True)
    with COMPUTE_LOCK:
        accs: dict[str, float] = {}
        for i, t in enumerate(names):
            report(on_progress, i / len(names), f"{spec.label}: evaluating {t}")
            accs[t] = float(runtime.accuracy(task_model(runtime, spec, i), t))
        report(on_progress, 1.0, f"{spec.label}: done")
    frame = _rows(runtime, spec, accs, cached=False)
    if store is not None:
        store.put(zoo_key(runtime), spec.key(), frame[["task", "accuracy", "params", "bytes", "task_params",
                                                        "task_bytes"]].to_dict("records"))
    return frame


def run_specs(runtime: Any, specs: Sequence[RunSpec], store: Optional[ResultsStore] = None,
              on_progress: Progress = None) -> pd.DataFrame:
    """:func:`run_spec` for each spec, with overall progress; one frame with every row."""
    frames = []
    n = max(1, len(specs))
    for j, spec in enumerate(specs):
        def sub(f: float, msg: str, j: int = j) -> None:
            report(on_progress, (j + f) / n, f"[{j + 1}/{n}] {msg}")

        frames.append(run_spec(runtime, spec, store, sub))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)


def paper_specs(runtime: Any, merges: Optional[Iterable[str]] = None, keeps: Iterable[float] = PAPER_KEEPS,
                ranks: Iterable[int] = PAPER_RANKS) -> list[RunSpec]:
    """The rows of the paper's Table 1 that this zoo can fill: Pre-trained, Single-Task, each merge on full and
    LoRA fine-tunes, Post-Pruning and PERU-FFT (Task Arithmetic) at m%, PERU-LoRA at q."""
    sources = available_sources(runtime)
    names = list(merges) if merges is not None else [m.name for m in list_methods()]
    specs = [RunSpec.make(Mode.PRETRAINED)]
    specs += [RunSpec.make(Mode.SINGLE_TASK, s) for s in sources]
    specs += [RunSpec.make(Mode.MERGE, s, m) for s in sources for m in names]
    if Source.FULL in sources:
        specs += [RunSpec.make(Mode.POST_PRUNING, Source.FULL, keep=k) for k in keeps]
        specs += [RunSpec.make(Mode.PERU_FFT, Source.FULL, "task_arithmetic", keep=k) for k in keeps]
    if Source.LORA in sources:
        r = lora_rank(runtime)
        specs += [RunSpec.make(Mode.PERU_LORA, rank=q) for q in ranks if q <= r]
    return specs


def _save_bytes(tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def artifacts(runtime: Any, spec: RunSpec) -> dict[str, bytes]:
    """Downloadable files of ``spec`` as safetensors bytes: the shared model and each task's specific part."""
    names = runtime.zoo.task_names
    meta = {"peru_spec": spec.key(), "zoo": runtime.zoo.name}
    if spec.mode in (Mode.PRETRAINED, Mode.MERGE):
        shared = runtime.base_state() if spec.mode is Mode.PRETRAINED else merged_model(runtime, spec)
        return {"shared_model.safetensors": _save_bytes(shared, meta)}
    if spec.mode is Mode.SINGLE_TASK:
        return {f"{t}.safetensors": _save_bytes(task_model(runtime, spec, i), meta) for i, t in enumerate(names)}
    if spec.mode is Mode.PERU_LORA:
        out = {"shared_model.safetensors": _save_bytes(runtime.base_state(), meta)}
        for t in names:
            out[f"{t}.rank{spec.rank}.safetensors"] = _save_bytes(
                lowrank_to_tensors(_lora_reuse(runtime, t).task_part(spec.rank)), meta)
        return out
    shared = merged_model(runtime, spec) if spec.mode is Mode.PERU_FFT else runtime.base_state()
    out = {"shared_model.safetensors": _save_bytes(shared, meta)}
    for i, t in enumerate(names):
        tensors, part_meta = _sparse(runtime, spec, i).task_part(spec.keep).to_tensors()
        out[f"{t}.top{spec.keep:g}pct.safetensors"] = _save_bytes(tensors, {**meta, **part_meta})
    return out
