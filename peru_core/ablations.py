"""The paper's ablations that need more than a run spec: pruning theta_t itself (Table 10) and merging a subset of
the zoo's tasks (Table 7 / Appendix B.3). PERU: https://arxiv.org/abs/2310.01886

* Pruning theta_t (m%): each task keeps the top-m% entries of its fine-tuned weights theta_t themselves (the tuned
  part, by magnitude), zero elsewhere, and nothing is shared: #params = T x k. The paper's point is that this fails
  where keeping the top-m% of v_t = theta_t - theta_0 (Post-Pruning) or u_t = theta_t - theta_star (PERU-FFT), both
  ordinary run specs, does not.
* A task subset S: the merge is built from exactly the fine-tunes of S (``get_method(name)(base, [theta_t for t in
  S])``), PERU-FFT's u_t are taken against that merge, and only the tasks of S are evaluated.

Results go to the results store under keys of their own (JSON, not run specs) that name what they depend on: the
spec's engine version (so a change to the merge or the top-m% code recomputes them) and this module's version.
"""
from __future__ import annotations

import itertools
import json
import random
from typing import Any, Iterator, Mapping, Optional, Sequence

import pandas as pd
import torch

from peru_core import experiments
from peru_core.engine import CORE_VERSION, engine_version
from peru_core.errors import PeruError
from peru_core.merging import get_method
from peru_core.reuse import SparseReuse
from peru_core.sparse import keep_count, top_m
from peru_core.spec import Mode, RunSpec, Scope, Source
from peru_core.statedict import numel, unflatten
from peru_core.store import ResultsStore
from peru_core.types import Progress, StateDict, report

VERSION = "1"  # bump when this module's code changes a stored ablation result
PRUNE_THETA = "Pruning θ_t"
SUBSET_COLUMNS = ["key", "label", "method", "mode", "merge", "keep", "subset", "T", "task", "accuracy", "cached"]


def _get(runtime: Any, store: Optional[ResultsStore], key: str, names: Sequence[str]) -> Optional[list[dict]]:
    """The stored rows of ``key`` on ``names`` at the runtime's precision, or None (also without a store)."""
    if store is None:
        return None
    return store.get(experiments.zoo_key(runtime), key, names, precision=experiments.precision_of(runtime))


# ---------------------------------------------------------------- Table 10: prune theta_t itself
def prune_theta(finetuned: Mapping[str, torch.Tensor], keep: float, scope: str = "global", *,
                device: Any = None) -> StateDict:
    """theta_t with only its top-``keep``% entries by magnitude kept (``peru_core.sparse.top_m`` on theta_t's flat
    vector: exactly ``keep_count(d, keep)`` of them), every other entry zero; tensors in theta_t's dtypes."""
    part = top_m(finetuned, keep, scope, device=device)
    return unflatten(part.to_flat(), part.layout)


def prune_theta_key(source: Source, keep: float, scope: str = "global") -> str:
    """The store key of the Pruning-theta_t rows at ``keep`` (depends on evaluation and top-m% code only)."""
    return json.dumps({"ablation": "prune-theta", "source": Source(source).value, "keep": round(float(keep), 6),
                       "scope": Scope(scope).value,
                       "engine": f"core{CORE_VERSION}/{engine_version(RunSpec.make('post-pruning', keep=keep))}"
                                 f"/ablations{VERSION}"}, sort_keys=True)


def prune_theta_rows(runtime: Any, keep: float, source: Source | str = Source.FULL, scope: str = "global",
                     store: Optional[ResultsStore] = None, on_progress: Progress = None) -> pd.DataFrame:
    """Per-task accuracy of Pruning theta_t at ``keep`` (held-out test sets), in run-spec row columns: #params is the
    paper's T x k (no shared model); bytes are not given (no file is written for this ablation)."""
    source = Source(source)
    key, names = prune_theta_key(source, keep, scope), runtime.zoo.task_names
    hit = _get(runtime, store, key, names)
    if hit is not None:
        accs, cached = {r["task"]: r["accuracy"] for r in hit}, True
    else:
        accs, cached = {}, False
        with experiments.COMPUTE_LOCK:
            for i, t in enumerate(names):
                report(on_progress, i / len(names), f"{PRUNE_THETA} {keep:g}%: evaluating {t}")
                model = prune_theta(experiments.source_model(runtime, source, i), keep, scope,
                                    device=runtime.device)
                accs[t] = float(runtime.accuracy(model, t))
        if store is not None:
            store.put(experiments.zoo_key(runtime), key, [{"task": t, "accuracy": a} for t, a in accs.items()],
                      precision=experiments.precision_of(runtime))
    report(on_progress, 1.0, f"{PRUNE_THETA} {keep:g}%: done")
    base = runtime.base_state()
    k = keep_count(numel(base), keep) if scope == "global" else sum(keep_count(v.numel(), keep)
                                                                    for v in base.values())
    label = f"{PRUNE_THETA} {keep:g}%" + (" per-tensor" if scope == "per-tensor" else "")
    rows = [{"spec_key": key, "label": label, "method": PRUNE_THETA, "mode": "prune-theta",
             "source": source.value, "merge": None, "keep": float(keep), "rank": None, "scope": scope, "task": t,
             "accuracy": accs[t], "params": k * len(names), "bytes": float("nan"), "task_params": k,
             "task_bytes": float("nan"), "cached": cached} for t in names]
    return pd.DataFrame(rows, columns=experiments.ROW_COLUMNS)


# ---------------------------------------------------------------- Table 7 / B.3: a subset of the tasks
class SubsetContext:
    """A zoo's :class:`~peru_core.merging.registry.MergeContext` seen through a task subset: the merge's task ``i``
    is the zoo's task ``indices[i]`` (Fisher, RegMean and AdaMerging statistics of exactly the subset's tasks)."""

    def __init__(self, context: Any, indices: Sequence[int]) -> None:
        self.context, self.indices = context, list(indices)

    def fisher(self, task: int, state_dict: StateDict, samples: int) -> StateDict:
        return self.context.fisher(self.indices[task], state_dict, samples)

    def grams(self, task: int, state_dict: StateDict, samples: int) -> dict[str, torch.Tensor]:
        return self.context.grams(self.indices[task], state_dict, samples)

    def test_batches(self, task: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        return self.context.test_batches(self.indices[task], batch_size, seed)

    def logits_fn(self, task: int) -> Any:
        return self.context.logits_fn(self.indices[task])


def _indices(runtime: Any, subset: Sequence[str]) -> list[int]:
    names = runtime.zoo.task_names
    unknown = [t for t in subset if t not in names]
    if unknown or not subset or len(set(subset)) != len(subset):
        what = f"has no task {unknown[0]!r}" if unknown else "needs at least one task, each once"
        raise PeruError(f"The task subset {what}; pick tasks from: {', '.join(names)}.")
    return [names.index(t) for t in subset]


def subset_merge(runtime: Any, spec: RunSpec, subset: Sequence[str], on_progress: Progress = None) -> StateDict:
    """theta_star of ``spec``'s merge built from exactly the fine-tunes of the tasks in ``subset`` (in zoo order)."""
    idx = sorted(_indices(runtime, subset))
    method = get_method(spec.merge)
    context = None
    if method.needs:
        from peru_core.zoo.context import ZooContext

        context = SubsetContext(ZooContext(runtime), idx)
    finetuned = [experiments.source_model(runtime, spec.source, i) for i in idx]
    return method(runtime.base_state(), finetuned, context=context, on_progress=on_progress,
                  device=runtime.device, **dict(spec.params))


def subset_key(spec: RunSpec, subset: Sequence[str]) -> str:
    """The store key of ``spec`` run on ``subset`` (sorted: a subset is a set)."""
    return json.dumps({"ablation": "task-subset", "spec": spec.key(), "tasks": sorted(subset),
                       "engine": f"{engine_version(spec)}/ablations{VERSION}"}, sort_keys=True)


def run_subset(runtime: Any, spec: RunSpec, subset: Sequence[str], store: Optional[ResultsStore] = None,
               on_progress: Progress = None, merged: Optional[dict] = None) -> pd.DataFrame:
    """Accuracy on each task of ``subset`` of a MERGE or PERU-FFT ``spec`` whose merge sees only those tasks' fine-
    tunes (store first; computed and stored otherwise). ``merged``: a dict reused across calls to build each
    subset's merge once (merge alone and PERU-FFT at several m share it)."""
    if spec.mode not in (Mode.MERGE, Mode.PERU_FFT):
        raise PeruError(f"{spec.label} does not depend on which tasks are merged; run it with run_spec.")
    idx = sorted(_indices(runtime, subset))
    names = [runtime.zoo.task_names[i] for i in idx]
    key = subset_key(spec, names)
    if names == runtime.zoo.task_names:  # every task: the ordinary run spec (its stored rows, or stored as one)
        full = experiments.run_spec(runtime, spec, store, on_progress)
        return pd.DataFrame([{"key": key, "label": spec.label, "method": spec.method_label, "mode": spec.mode.value,
                              "merge": spec.merge, "keep": spec.keep, "subset": " + ".join(names), "T": len(names),
                              "task": r["task"], "accuracy": r["accuracy"], "cached": r["cached"]}
                             for _, r in full.iterrows()], columns=SUBSET_COLUMNS)
    hit = _get(runtime, store, key, names)
    if hit is not None:
        accs, cached = {r["task"]: r["accuracy"] for r in hit}, True
    else:
        accs, cached = {}, False
        memo = merged if merged is not None else {}
        with experiments.COMPUTE_LOCK:
            mkey = (spec.source, spec.merge, spec.params, tuple(names))
            if mkey not in memo:
                report(on_progress, 0.0, f"{spec.method_label}: merging {len(names)} tasks")
                memo[mkey] = subset_merge(runtime, spec, names)
            star = memo[mkey]
            for j, (i, t) in enumerate(zip(idx, names)):
                report(on_progress, j / len(names), f"{spec.label} on {len(names)} tasks: evaluating {t}")
                model = star if spec.mode is Mode.MERGE else SparseReuse(
                    star, experiments.source_model(runtime, spec.source, i), spec.scope.value,
                    device=runtime.device).model(spec.keep)
                accs[t] = float(runtime.accuracy(model, t))
        if store is not None:
            store.put(experiments.zoo_key(runtime), key, [{"task": t, "accuracy": accs[t]} for t in names],
                      precision=experiments.precision_of(runtime))
    report(on_progress, 1.0, f"{spec.label} on {len(names)} tasks: done")
    rows = [{"key": key, "label": spec.label, "method": spec.method_label, "mode": spec.mode.value,
             "merge": spec.merge, "keep": spec.keep, "subset": " + ".join(names), "T": len(names), "task": t,
             "accuracy": accs[t], "cached": cached} for t in names]
    return pd.DataFrame(rows, columns=SUBSET_COLUMNS)


def stored_subset(runtime: Any, spec: RunSpec, subset: Sequence[str], store: ResultsStore) -> bool:
    """Whether the store holds ``spec`` on ``subset`` for every task of it (nothing computed)."""
    names = [runtime.zoo.task_names[i] for i in sorted(_indices(runtime, subset))]
    if names == runtime.zoo.task_names:
        return _get(runtime, store, spec.key(), names) is not None
    return _get(runtime, store, subset_key(spec, names), names) is not None


def run_subsets(runtime: Any, specs: Sequence[RunSpec], subsets: Sequence[Sequence[str]],
                store: Optional[ResultsStore] = None, on_progress: Progress = None) -> pd.DataFrame:
    """:func:`run_subset` for every (subset, spec), each subset's merge built once; one frame."""
    frames, pairs = [], [(s, sp) for s in subsets for sp in specs]
    n, merged = max(1, len(pairs)), {}
    for j, (s, sp) in enumerate(pairs):
        def sub(f: float, msg: str, j: int = j) -> None:
            report(on_progress, (j + f) / n, f"[{j + 1}/{n}] {msg}")

        frames.append(run_subset(runtime, sp, s, store, sub, merged))
        if len(merged) > 2:  # keep the memory of a few merged models at most (subsets come one after another)
            merged.pop(next(iter(merged)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUBSET_COLUMNS)


def task_subsets(tasks: Sequence[str], sizes: Sequence[int], cap: int, seed: int = 0) -> list[tuple[str, ...]]:
    """All subsets of each size in ``sizes`` (tasks in the given order), or ``cap`` of them drawn without
    replacement by a seeded RNG when a size has more (the same draw on every call)."""
    if cap < 1:
        raise PeruError(f"The cap of {cap} subsets per size keeps nothing; give at least 1.")
    out: list[tuple[str, ...]] = []
    for t in sizes:
        if not 1 <= t <= len(tasks):
            raise PeruError(f"A subset of {t} tasks is not possible with {len(tasks)} tasks; pick 1 to {len(tasks)}.")
        combos = list(itertools.combinations(tasks, t))
        out += combos if len(combos) <= cap else sorted(random.Random(seed * 1000 + t).sample(combos, cap),
                                                        key=combos.index)
    return out


def subset_means(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method setting, subset): its T and the average accuracy over the subset's tasks."""
    g = rows.groupby(["label", "method", "subset", "T"], sort=False, as_index=False)["accuracy"].mean()
    return g


def by_task_count(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against T (Table 7 / B.3): per method setting and T, the mean over the subsets of each subset's
    average accuracy, with the lowest and highest subset average and how many subsets were run."""
    s = subset_means(rows)
    g = s.groupby(["label", "method", "T"], sort=False)["accuracy"]
    return pd.DataFrame({"accuracy": g.mean(), "low": g.min(), "high": g.max(), "subsets": g.size()}).reset_index()


# ---------------------------------------------------------------- Table 10 and Table 5 as run specs
def table10_specs(keep: float, scope: str = "global", merge: str = "task_arithmetic") -> list[RunSpec]:
    """Table 10's two ordinary rows at ``keep``: the top-m% of v_t (Post-Pruning) and of u_t (PERU-FFT on
    ``merge`` at its registry defaults), both on full fine-tunes."""
    return [RunSpec.make(Mode.POST_PRUNING, Source.FULL, keep=keep, scope=scope),
            RunSpec.make(Mode.PERU_FFT, Source.FULL, merge, get_method(merge).defaults(), keep=keep, scope=scope)]


def stored_table10(runtime: Any, keeps: Sequence[float], store: ResultsStore, scope: str = "global",
                   merge: str = "task_arithmetic") -> bool:
    """Whether every row of :func:`table10_rows` is stored (nothing computed)."""
    names = runtime.zoo.task_names
    return all(_get(runtime, store, prune_theta_key(Source.FULL, k, scope), names) is not None and
               all(_get(runtime, store, sp.key(), names) is not None for sp in table10_specs(k, scope, merge))
               for k in keeps)


def table10_rows(runtime: Any, keeps: Sequence[float], store: Optional[ResultsStore] = None, scope: str = "global",
                 merge: str = "task_arithmetic", on_progress: Progress = None) -> pd.DataFrame:
    """Table 10 at each m of ``keeps``: per-task held-out accuracy of pruning theta_t, v_t and u_t (run-spec row
    columns; stored rows are read, the rest computed and stored)."""
    steps = [(k, sp) for k in keeps for sp in (None, *table10_specs(k, scope, merge))]
    frames, n = [], max(1, len(steps))
    for j, (k, sp) in enumerate(steps):
        def sub(f: float, msg: str, j: int = j) -> None:
            report(on_progress, (j + f) / n, f"[{j + 1}/{n}] {msg}")

        frames.append(prune_theta_rows(runtime, k, Source.FULL, scope, store, sub) if sp is None
                      else experiments.run_spec(runtime, sp, store, sub))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=experiments.ROW_COLUMNS)


def table5_specs(keep: float, merges: Sequence[str], source: Source | str = Source.FULL,
                 scope: str = "global") -> list[RunSpec]:
    """Table 5: each merge of ``merges`` alone and with PERU-FFT's top-m% of u_t at ``keep`` on top (registry
    defaults), after the two references; all ordinary run specs (the store shares them with every page)."""
    specs = [RunSpec.make(Mode.PRETRAINED), RunSpec.make(Mode.SINGLE_TASK, source)]
    for m in merges:
        params = get_method(m).defaults()
        specs += [RunSpec.make(Mode.MERGE, source, m, params),
                  RunSpec.make(Mode.PERU_FFT, source, m, params, keep=keep, scope=scope)]
    return specs
