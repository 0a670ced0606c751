"""The zoo's sanity figures per task: pre-trained, fine-tuned (full, LoRA, L-LoRA), Task Arithmetic, best merge.

``python -m peru_core.zoo report [DIR]`` prints them; the build stores them in ``zoo.json`` (``build.metrics``).
Task Arithmetic (theta_0 + lam * sum_t v_t, https://arxiv.org/abs/2212.04089) picks lam on the validation sets,
never on test, as PERU (https://arxiv.org/abs/2310.01886) does; it is run for every kind of fine-tune the zoo has
(full, LoRA, L-LoRA: adapters folded to full deltas). "Best merge" is, per kind, the best average test accuracy of the
registered merge methods at their default settings, i.e. the sweep's ``Merge`` rows (``python -m peru_core sweep``).
LoRA and L-LoRA fine-tunes are read back with PEFT itself (``PeftModel.from_pretrained`` + ``merge_and_unload``),
which checks the adapter files independently of peru_core.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np

from peru_core.types import StateDict
from peru_core.zoo.manifest import Zoo
from peru_core.zoo.runtime import ZooRuntime

LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
ADAPTER_KINDS = ("lora", "llora")


def lora_merged_state(rt: ZooRuntime, task: int, kind: str = "lora") -> StateDict:
    """The tuned part of base + (L-)LoRA delta, merged by PEFT from the task's adapter folder."""
    from peft import PeftModel

    model = copy.deepcopy(rt.model).cpu()
    model.load_state_dict({**model.state_dict(), **rt.base_state()})
    merged = PeftModel.from_pretrained(model, str(getattr(rt.spec(task), kind))).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items() if k.startswith(rt.prefix)}


def task_arithmetic(base: StateDict, finetuned: Sequence[StateDict], lam: float) -> StateDict:
    return {k: base[k] + lam * sum(f[k] - base[k] for f in finetuned) for k in base}


def _ta_on_validation(rt: ZooRuntime, base: StateDict, fts: Sequence[StateDict], lambdas: Sequence[float]
                      ) -> tuple[float, dict[float, float], StateDict]:
    """lam with the best mean validation accuracy (ties: the smaller lam), the validation curve, the merge."""
    n = len(fts)
    val = {}
    for lam in lambdas:  # one merge per lam, evaluated on every task
        merged = task_arithmetic(base, fts, lam)
        val[lam] = float(np.mean([rt.accuracy(merged, i, split="validation") for i in range(n)]))
    lam = max(val, key=lambda k: (val[k], -k))
    return lam, val, task_arithmetic(base, fts, lam)


def best_merges(rt: ZooRuntime) -> dict[str, dict[str, float]]:
    """Per kind of fine-tune: average test accuracy (percent) of every registered merge at its default settings."""
    from peru_core import experiments
    from peru_core.merging import list_methods
    from peru_core.spec import Mode, RunSpec

    out: dict[str, dict[str, float]] = {}
    for source in experiments.available_sources(rt):
        out[source.value] = {}
        for method in list_methods():
            frame = experiments.run_spec(rt, RunSpec.make(Mode.MERGE, source, method.name))
            out[source.value][method.name] = round(100 * float(frame["accuracy"].mean()), 2)
    return out


def evaluate_zoo(zoo: Zoo, device: Optional[str] = None, lambdas: Sequence[float] = LAMBDAS,
                 merges: bool = True) -> dict[str, Any]:
    """Per-task test accuracy (percent) of pre-trained, each kind of fine-tune and Task Arithmetic of each kind,
    plus averages; with ``merges``, also every registered merge per kind (``best_merge``)."""
    rt = ZooRuntime(zoo, device)
    names = zoo.task_names
    base = rt.base_state()
    kinds = {"finetuned": [rt.finetuned(i) for i in range(len(names))]}
    for kind in ADAPTER_KINDS:
        if all(getattr(t, kind) is not None for t in zoo.tasks):
            kinds[kind] = [lora_merged_state(rt, i, kind) for i in range(len(names))]
    rows: dict[str, dict[str, float]] = {n: {} for n in names}
    for i, n in enumerate(names):
        rows[n]["pretrained"] = 100 * rt.accuracy(base, i)
        for kind, states in kinds.items():
            rows[n][kind] = 100 * rt.accuracy(states[i], i)
    lams: dict[str, float] = {}
    curves: dict[str, dict[str, float]] = {}
    for kind, states in kinds.items():
        col = "task_arithmetic" if kind == "finetuned" else f"task_arithmetic_{kind}"
        lam, val, ta = _ta_on_validation(rt, base, states, lambdas)
        lams[col], curves[col] = lam, {str(k): round(100 * v, 2) for k, v in val.items()}
        for i, n in enumerate(names):
            rows[n][col] = 100 * rt.accuracy(ta, i)
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    avg = {c: float(np.mean([r[c] for r in rows.values() if c in r])) for c in cols}
    out = {"per_task": {n: {c: round(v, 2) for c, v in r.items()} for n, r in rows.items()},
           "average": {c: round(v, 2) for c, v in avg.items()},
           "task_arithmetic_lam": lams["task_arithmetic"], "task_arithmetic_lams": lams,
           "task_arithmetic_validation": curves["task_arithmetic"], "task_arithmetic_validation_curves": curves}
    if merges:
        out["merges"] = best_merges(rt)
        out["best_merge"] = {k: max(v.items(), key=lambda kv: kv[1]) for k, v in out["merges"].items()}
    return out


def format_metrics(m: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_zoo`'s output."""
    cols = list(m["average"])
    short = {"task_arithmetic": "TA", "task_arithmetic_lora": "TA [LoRA]", "task_arithmetic_llora": "TA [L-LoRA]",
             "llora": "L-LoRA", "lora": "LoRA"}
    lines = ["task".ljust(12) + "".join(short.get(c, c)[:15].rjust(16) for c in cols)]
    for n, r in list(m["per_task"].items()) + [("AVERAGE", m["average"])]:
        lines.append(n.ljust(12) + "".join(f"{r.get(c, float('nan')):16.2f}" for c in cols))
    lams = m.get("task_arithmetic_lams", {"task_arithmetic": m["task_arithmetic_lam"]})
    lines.append("Task Arithmetic lam (chosen on validation): "
                 + ", ".join(f"{short.get(k, k)} {v}" for k, v in lams.items()))
    for kind, (method, acc) in m.get("best_merge", {}).items():
        lines.append(f"best merge [{kind}] at default settings: {method} {acc:.2f} "
                     f"(all: {', '.join(f'{k} {v:.2f}' for k, v in m['merges'][kind].items())})")
    return "\n".join(lines)
