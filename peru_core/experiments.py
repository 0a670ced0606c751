"""Run specs on a zoo: build each task's model, evaluate it on held-out data, account for its cost, store the rows.

This is the one place where a :class:`~peru_core.spec.RunSpec` becomes numbers; the CLI ``sweep`` command and every
dashboard page go through it, so a result computed in one is found by the other in the results store.
Rows mirror the paper's tables (https://arxiv.org/abs/2310.01886, Table 1): per-task accuracy, #params, bytes.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional, Sequence

import pandas as pd
import torch
from safetensors.torch import save as st_save

from peru_core import accounting as acc
from peru_core import taskpart
from peru_core.errors import PeruError
from peru_core.io import read_file_header
from peru_core.lowrank import truncate_adapter
from peru_core.merging import get_method, list_methods
from peru_core.partreuse import PART_METHODS, MaskedParts, get_part_method
from peru_core.reuse import LoraReuse, SparseReuse
from peru_core.sparse import SparseDelta, keep_count, part_dtype
from peru_core.spec import PART_MODES, Mode, RunSpec, Source
from peru_core.statedict import Layout, numel
from peru_core.store import ResultsStore
from peru_core.types import Progress, StateDict, report

# One computation at a time per process: two browser sessions never run two GPU jobs at once.
COMPUTE_LOCK = threading.Lock()
PAPER_KEEPS = (1.0, 5.0, 10.0, 20.0)
PAPER_RANKS = (1, 2, 4, 8, 16)
# the merges of the paper's Table 1: the sweep's default (the rest of the registry is one --methods away)
PAPER_MERGES = ("average", "task_arithmetic", "fisher", "regmean", "ties")
ROW_COLUMNS = ["spec_key", "label", "method", "mode", "source", "merge", "keep", "rank", "scope", "task",
               "accuracy", "params", "bytes", "task_params", "task_bytes", "cached"]


def _approx_bytes(value: Any) -> int:
    """Rough memory held by a memoised value: tensors of a state dict, or what an object with ``nbytes`` says
    (``SparseReuse``, ``partreuse.MaskedParts``)."""
    if isinstance(value, dict):
        return sum(t.numel() * t.element_size() for t in value.values() if isinstance(t, torch.Tensor))
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
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
    """Sources every task of the zoo has: full fine-tunes, LoRA and/or L-LoRA adapters (in that order)."""
    tasks = runtime.zoo.tasks
    return [s for s, ok in ((Source.FULL, all(t.finetuned for t in tasks)),
                            (Source.LORA, all(t.lora for t in tasks)),
                            (Source.LLORA, all(t.llora for t in tasks))) if ok]


def lora_rank(runtime: Any, source: Source = Source.LORA) -> int:
    """The largest rank over the zoo's adapters of ``source`` (the upper end of the q slider)."""
    return max(f.rank for t in runtime.zoo.task_names for f in runtime.adapter(t, source.value).values())


def _lora_model(runtime: Any, task: str, source: Source = Source.LORA) -> StateDict:
    """theta_0 + scale * B A on the adapter's targets: the (L-)LoRA fine-tune as a full tuned state dict. An L-LoRA
    adapter folds in exactly like a LoRA one: its linearized update dB A_0 (B_0 = 0) is the product B A."""
    def make() -> StateDict:
        base = runtime.base_state()
        out = dict(base)
        for key, f in runtime.adapter(task, source.value).items():  # targets were checked against the base
            out[key] = (base[key].float() + f.delta(torch.float32)).to(base[key].dtype)
        return out

    return _memo(runtime).get(("lora-model", source, task), make)


def source_model(runtime: Any, source: Source, task: int) -> StateDict:
    """Task ``task``'s fine-tuned tuned part, from its full fine-tune or its (L-)LoRA adapter merged in."""
    if source not in available_sources(runtime):
        raise PeruError(f"This zoo has no {source.value} fine-tunes for every task; pick another kind of fine-tune.")
    name = runtime.zoo.task_names[task]
    return runtime.finetuned(name) if source is Source.FULL else _lora_model(runtime, name, source)


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


def _lora_reuse(runtime: Any, task: str, source: Source = Source.LORA) -> LoraReuse:
    return _memo(runtime).get(("lora-reuse", source, task),
                              lambda: LoraReuse(runtime.base_state(), runtime.adapter(task, source.value)))


def stored_dtypes(runtime: Any) -> dict[str, torch.dtype]:
    """Each tuned tensor's dtype as stored in the base file: downloads are written in it, and sized in it (the
    runtime computes in float32, but a float16 zoo stores 2 bytes per value)."""
    def make() -> dict[str, torch.dtype]:
        header = read_file_header(runtime.zoo.base, runtime.zoo.base.name)
        return {k: acc.dtype_of(header[k]["dtype"]) for k in runtime.tuned_keys}

    return _memo(runtime).get(("stored-dtypes",), make)


def _file_meta(runtime: Any, spec: RunSpec) -> dict[str, str]:
    """Metadata of every file written for ``spec`` (part of each file's size)."""
    return {"peru_spec": spec.key(), "zoo": runtime.zoo.name}


def _stored_layout(runtime: Any) -> Layout:
    """The flat layout of the tuned part with its stored dtypes (what a sparse task part describes)."""
    layout, dts = Layout.of(runtime.base_state()), stored_dtypes(runtime)
    return dataclasses.replace(layout, dtypes=tuple(dts[k] for k in layout.keys))


def check_rank(runtime: Any, spec: RunSpec) -> None:
    """A PERU-LoRA q must lie in [1, the largest adapter rank]; a one-sentence PeruError otherwise."""
    if spec.mode is not Mode.PERU_LORA:
        return
    r = lora_rank(runtime, spec.source)
    if not 1 <= spec.rank <= r:
        raise PeruError(f"Rank q={spec.rank} is out of range; give a whole number from 1 to {r}, the largest "
                        "adapter rank of this zoo.")


def _kept_shapes(runtime: Any, spec: RunSpec, task: str) -> dict[str, tuple[int, int, int]]:
    """``key -> (d_out, d_in, q kept)`` of task's PERU-LoRA part: q clamped per matrix to min(r, d_out, d_in)."""
    return {k: (*f.shape, min(spec.rank, f.rank, *f.shape))
            for k, f in runtime.adapter(task, spec.source.value).items()}


def _costs(runtime: Any, spec: RunSpec) -> acc.Accounting:
    """The paper's #params and the exact sizes of the files :func:`artifacts` writes for ``spec`` (shared = the
    tuned part, e.g. the image encoder; the frozen text tower and heads are the same for every method and not
    counted). Computed from shapes and metadata alone: nothing is written."""
    check_rank(runtime, spec)
    base, dts, meta = runtime.base_state(), stored_dtypes(runtime), _file_meta(runtime, spec)
    d, T, name, names = numel(base), len(runtime.zoo.tasks), spec.mode.value, runtime.zoo.task_names
    model_bytes = acc.safetensors_bytes(acc.state_dict_entries(base, dts), meta)  # shared or one task's model
    if spec.mode in (Mode.PRETRAINED, Mode.MERGE):
        return acc.merge_accounting(name, d, model_bytes, T)
    if spec.mode is Mode.SINGLE_TASK and spec.source is Source.FULL:
        return acc.full_accounting(d, [model_bytes] * T)  # T whole models, no shared model
    if spec.mode is Mode.SINGLE_TASK:  # plain LoRA stores A and B: r (d_out + d_in) per matrix, on the base
        ads = [runtime.adapter(t, spec.source.value) for t in names]
        return acc.reuse_accounting(name, d, model_bytes,
                                    [sum(f.rank * (f.shape[0] + f.shape[1]) for f in a.values()) for a in ads],
                                    [taskpart.lora_part_bytes(a, dts, meta) for a in ads])
    if spec.mode is Mode.PERU_LORA:
        kept = [_kept_shapes(runtime, spec, t) for t in names]
        return acc.reuse_accounting(name, d, model_bytes, [sum(q * (o + i + 1) for o, i, q in k.values())
                                                           for k in kept],
                                    [taskpart.lowrank_part_bytes(k, dts, spec.rank, meta) for k in kept])
    if spec.mode in PART_MODES:  # TALL / EMR: theta_0 and the task vector shared (2d), a d-bit mask per task
        method, layout = get_part_method(name), _stored_layout(runtime)
        return acc.reuse_accounting(name, 2 * d, model_bytes + taskpart.vector_file_bytes(layout, dts, name, meta),
                                    [method.task_params(d)] * T,
                                    [taskpart.mask_part_bytes(layout, name, method.rescaled, meta)] * T)
    layout = _stored_layout(runtime)
    if spec.scope.value == "global":
        nnz = keep_count(d, spec.keep)
    else:
        nnz = sum(keep_count(e - s, spec.keep) for _, s, e in layout.spans())
    part = taskpart.sparse_part_bytes(layout, nnz, spec.keep, spec.scope.value, part_dtype(layout.dtypes), meta)
    return acc.reuse_accounting(name, d, model_bytes, [nnz] * T, [part] * T)


def _masked_parts(runtime: Any, spec: RunSpec) -> MaskedParts:
    """The shared vector, masks and rescalers of a TALL / EMR spec (all tasks at once; cached per runtime)."""
    return _memo(runtime).get(("masked", spec.mode, spec.source, spec.params), lambda: get_part_method(
        spec.mode.value)(runtime.base_state(), source_models(runtime, spec.source), **dict(spec.params)))


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
    if spec.mode in PART_MODES:
        return _masked_parts(runtime, spec).model(runtime.base_state(), i)
    if spec.mode in (Mode.POST_PRUNING, Mode.PERU_FFT):
        return _sparse(runtime, spec, i).model(spec.keep)
    if spec.mode is Mode.PERU_LORA:
        check_rank(runtime, spec)
        return _lora_reuse(runtime, name, spec.source).model(spec.rank)
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


def precision_of(runtime: Any) -> str:
    """The runtime's evaluation precision ("float32" unless a bf16 runtime): part of every stored row's key."""
    return getattr(runtime, "precision", "float32")


def _data_driven_merge_first(runtime: Any, spec: RunSpec, on_progress: Progress) -> float:
    """Build a data-driven merge (Fisher, RegMean, AdaMerging, which trains for a while) before evaluating, with its
    own progress on the first half of the bar; returns the share of the bar it took (0 for the other specs)."""
    if not (spec.merge and get_method(spec.merge).needs):
        return 0.0
    merged_model(runtime, spec, lambda f, msg: report(on_progress, 0.5 * f, f"{spec.label}: {msg}"))
    return 0.5


def run_spec(runtime: Any, spec: RunSpec, store: Optional[ResultsStore] = None,
             on_progress: Progress = None) -> pd.DataFrame:
    """Per-task accuracy (held-out test sets) and costs of ``spec``: from the store when present, else computed
    and stored (all tasks of a spec in one transaction). Only exact rows: estimates are :func:`estimate_spec`'s."""
    names = runtime.zoo.task_names
    if store is not None:
        hit = store.get(zoo_key(runtime), spec.key(), names, precision=precision_of(runtime))
        if hit is not None:
            report(on_progress, 1.0, f"{spec.label}: from the results store")
            return _rows(runtime, spec, {r["task"]: r["accuracy"] for r in hit}, cached=True)
    with COMPUTE_LOCK:
        accs: dict[str, float] = {}
        first = _data_driven_merge_first(runtime, spec, on_progress)
        for i, t in enumerate(names):
            report(on_progress, first + (1 - first) * i / len(names), f"{spec.label}: evaluating {t}")
            accs[t] = float(runtime.accuracy(task_model(runtime, spec, i), t))
        report(on_progress, 1.0, f"{spec.label}: done")
    frame = _rows(runtime, spec, accs, cached=False)
    if store is not None:
        store_rows(store, zoo_key(runtime), spec, frame, precision_of(runtime))
    return frame


def estimate_spec(runtime: Any, spec: RunSpec, store: Optional[ResultsStore] = None,
                  on_progress: Progress = None) -> Optional[pd.DataFrame]:
    """Quick estimates of ``spec`` (:mod:`peru_core.estimate`: each task's fixed stratified subset, a 95% Wilson
    interval): rows like :func:`run_spec`'s plus ``low``, ``high``, ``n``, ``total`` and ``estimate`` = True, stored
    in the store's estimates table (never among exact rows). None when the exact rows are stored already."""
    names, zoo_hash, precision = runtime.zoo.task_names, zoo_key(runtime), precision_of(runtime)
    if store is not None and store.get(zoo_hash, spec.key(), names, precision=precision) is not None:
        return None
    with COMPUTE_LOCK:
        first = _data_driven_merge_first(runtime, spec, on_progress)
        ests = {}
        for i, t in enumerate(names):
            report(on_progress, first + (1 - first) * i / len(names), f"{spec.label}: estimating {t}")
            ests[t] = runtime.estimate(task_model(runtime, spec, i), t)
    frame = _rows(runtime, spec, {t: e.accuracy for t, e in ests.items()}, cached=False)
    for col in ("low", "high", "n", "total"):
        frame[col] = [getattr(ests[t], col) for t in frame["task"]]
    frame["estimate"] = True
    if store is not None:
        store.put_estimates(zoo_hash, spec.key(), frame[["task", "accuracy", "low", "high", "n", "total"]]
                            .to_dict("records"), precision=precision)
    return frame


def stored_rows(runtime: Any, spec: RunSpec, store: ResultsStore) -> Optional[pd.DataFrame]:
    """What the store holds for ``spec``, computing nothing: its exact rows (``estimate`` False) when stored, else
    its quick estimates (``estimate`` True, with ``low``/``high``), else None. For pages showing work in progress;
    tables of results and CSVs take :func:`run_spec`'s exact rows only."""
    names, zoo_hash, precision = runtime.zoo.task_names, zoo_key(runtime), precision_of(runtime)
    hit = store.get(zoo_hash, spec.key(), names, precision=precision)
    if hit is not None:
        frame = _rows(runtime, spec, {r["task"]: r["accuracy"] for r in hit}, cached=True)
        return frame.assign(low=frame["accuracy"], high=frame["accuracy"], estimate=False)
    ests = store.estimates(zoo_hash, spec.key(), names, precision=precision)
    if ests is None:
        return None
    frame = _rows(runtime, spec, {r["task"]: r["accuracy"] for r in ests}, cached=True)
    by_task = {r["task"]: r for r in ests}
    return frame.assign(low=[by_task[t]["low"] for t in frame["task"]],
                        high=[by_task[t]["high"] for t in frame["task"]], estimate=True)


def store_rows(store: ResultsStore, zoo_hash: str, spec: RunSpec, frame: pd.DataFrame,
               precision: str = "float32") -> None:
    """Write the rows :func:`run_spec` computed for ``spec`` (one transaction); the Ray driver writes with it too."""
    if "estimate" in frame.columns and frame["estimate"].any():
        raise PeruError(f"Rows of {spec.label} are estimates; only exact rows go into the results table.")
    store.put(zoo_hash, spec.key(), frame[["task", "accuracy", "params", "bytes", "task_params",
                                           "task_bytes"]].to_dict("records"), precision=precision)


def run_specs(runtime: Any, specs: Sequence[RunSpec], store: Optional[ResultsStore] = None,
              on_progress: Progress = None,
              on_estimate: Optional[Callable[[RunSpec, pd.DataFrame], None]] = None) -> pd.DataFrame:
    """:func:`run_spec` for each spec, with overall progress; one frame with every (exact) row.

    With ``on_estimate``, every spec is first estimated (:func:`estimate_spec`: about a sixth of the work) and
    ``on_estimate(spec, rows)`` called at once, so a page can show the estimates while the exact pass runs."""
    frames = []
    todo = list(specs)
    n = max(1, len(todo))
    share = 0.0
    if on_estimate is not None:
        share = 0.15  # of the progress bar: about the estimate pass's share of the work
        for j, spec in enumerate(todo):
            def sub_e(f: float, msg: str, j: int = j) -> None:
                report(on_progress, share * (j + f) / n, f"[{j + 1}/{n}] {msg}")

            rows = estimate_spec(runtime, spec, store, sub_e)
            if rows is not None:
                on_estimate(spec, rows)
    for j, spec in enumerate(todo):
        def sub(f: float, msg: str, j: int = j) -> None:
            report(on_progress, share + (1 - share) * (j + f) / n, f"[{j + 1}/{n}] {msg}")

        frames.append(run_spec(runtime, spec, store, sub))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)


def paper_specs(runtime: Any, merges: Optional[Iterable[str]] = None, keeps: Iterable[float] = PAPER_KEEPS,
                ranks: Iterable[int] = PAPER_RANKS) -> list[RunSpec]:
    """The rows of the paper's Table 1 that this zoo can fill: Pre-trained, Single-Task, each merge (default: the
    paper's five, :data:`PAPER_MERGES`) on full, LoRA and L-LoRA fine-tunes, Post-Pruning and PERU-FFT (Task
    Arithmetic) at m%, PERU-LoRA at q (on LoRA and L-LoRA). ``merges`` may also name the mask-reuse modes
    (``tall``, ``emr``: one row per kind of fine-tune, at their registry defaults)."""
    sources = available_sources(runtime)
    registered = [m.name for m in list_methods()]
    names = list(merges) if merges is not None else [m for m in PAPER_MERGES if m in registered]
    masked = [n for n in names if n in PART_METHODS]
    names = [n for n in names if n not in PART_METHODS]
    specs = [RunSpec.make(Mode.PRETRAINED)]
    specs += [RunSpec.make(Mode.SINGLE_TASK, s) for s in sources]
    specs += [RunSpec.make(Mode.MERGE, s, m) for s in sources for m in names]
    specs += [RunSpec.make(Mode(n), s) for s in sources for n in masked]
    if Source.FULL in sources:
        specs += [RunSpec.make(Mode.POST_PRUNING, Source.FULL, keep=k) for k in keeps]
        specs += [RunSpec.make(Mode.PERU_FFT, Source.FULL, "task_arithmetic", keep=k) for k in keeps]
    for s in (s for s in sources if s.is_adapter):
        r = lora_rank(runtime, s)
        specs += [RunSpec.make(Mode.PERU_LORA, s, rank=q) for q in ranks if q <= r]
    return specs


def _save_bytes(tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _model_file(runtime: Any, sd: StateDict, meta: dict[str, str]) -> bytes:
    """A (shared or single-task) model file, floats in the zoo's stored dtypes."""
    dts = stored_dtypes(runtime)
    return _save_bytes({k: v.to(dts[k]) if v.is_floating_point() else v for k, v in sd.items()}, meta)


def artifacts(runtime: Any, spec: RunSpec) -> dict[str, bytes]:
    """Downloadable files of ``spec`` as safetensors bytes: the shared model and each task's specific part
    (formats: ``docs/task_part_format.md``). Their sizes are exactly :func:`_costs`' bytes."""
    check_rank(runtime, spec)
    names, dts, meta = runtime.zoo.task_names, stored_dtypes(runtime), _file_meta(runtime, spec)
    if spec.mode in PART_MODES:  # theta_0, the shared task vector, a mask (+ rescaler) per task
        parts, rescaled = _masked_parts(runtime, spec), get_part_method(spec.mode.value).rescaled
        # the masks' key order (their bit order) with the stored dtypes, for the files' metadata
        layout = dataclasses.replace(parts.layout, dtypes=tuple(dts[k] for k in parts.layout.keys))
        out = {"shared_model.safetensors": _model_file(runtime, runtime.base_state(), meta),
               "shared_vector.safetensors": _save_bytes(*taskpart.vector_file(parts, dts, spec.mode.value, meta))}
        out.update({f"{t}.{spec.mode.value}.safetensors": _save_bytes(*taskpart.mask_part(
            parts, i, layout, spec.mode.value, rescaled, meta)) for i, t in enumerate(names)})
        return out
    if spec.mode is Mode.SINGLE_TASK and spec.source is Source.FULL:
        return {f"{t}.safetensors": _model_file(runtime, task_model(runtime, spec, i), meta)
                for i, t in enumerate(names)}
    shared = merged_model(runtime, spec) if spec.mode in (Mode.MERGE, Mode.PERU_FFT) else runtime.base_state()
    out = {"shared_model.safetensors": _model_file(runtime, shared, meta)}
    layout = _stored_layout(runtime) if spec.mode in (Mode.POST_PRUNING, Mode.PERU_FFT) else None
    for i, t in enumerate(names):
        if spec.mode is Mode.SINGLE_TASK:
            out[f"{t}.lora.safetensors"] = _save_bytes(*taskpart.lora_part(runtime.adapter(t, spec.source.value),
                                                                           dts, meta))
        elif spec.mode is Mode.PERU_LORA:
            parts = truncate_adapter(_lora_reuse(runtime, t, spec.source).svds, spec.rank)  # float64 factors
            out[f"{t}.rank{spec.rank}.safetensors"] = _save_bytes(*taskpart.lowrank_part(parts, dts, spec.rank,
                                                                                         meta))
        elif spec.mode in (Mode.POST_PRUNING, Mode.PERU_FFT):
            delta = _sparse(runtime, spec, i).task_part(spec.keep)
            delta = SparseDelta(layout, delta.indices, delta.values, delta.keep, delta.scope)
            out[f"{t}.top{spec.keep:g}pct.safetensors"] = _save_bytes(
                *taskpart.sparse_part(delta, part_dtype(layout.dtypes), meta))
    return out
