"""The zoo's sanity figures: pre-trained, fine-tuned, LoRA and Task Arithmetic accuracy per task.

``python -m peru_core.zoo report [DIR]`` prints them; the build stores them in ``zoo.json`` (``build.metrics``).
Task Arithmetic (theta_0 + lam * sum_t v_t, https://arxiv.org/abs/2212.04089) picks lam on the validation sets,
never on test, as PERU (https://arxiv.org/abs/2310.01886) does. LoRA fine-tunes are read back with PEFT itself
(``PeftModel.from_pretrained`` + ``merge_and_unload``), which checks the adapter files independently of peru_core.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np

from peru_core.types import StateDict
from peru_core.zoo.manifest import Zoo
from peru_core.zoo.runtime import ZooRuntime

LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def lora_merged_state(rt: ZooRuntime, task: int) -> StateDict:
    """The tuned part of base + LoRA delta, merged by PEFT from the task's adapter folder."""
    from peft import PeftModel

    model = copy.deepcopy(rt.model).cpu()
    model.load_state_dict({**model.state_dict(), **rt.base_state()})
    merged = PeftModel.from_pretrained(model, str(rt.spec(task).lora)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items() if k.startswith(rt.prefix)}


def task_arithmetic(base: StateDict, finetuned: Sequence[StateDict], lam: float) -> StateDict:
    return {k: base[k] + lam * sum(f[k] - base[k] for f in finetuned) for k in base}


def evaluate_zoo(zoo: Zoo, device: Optional[str] = None, lambdas: Sequence[float] = LAMBDAS) -> dict[str, Any]:
    """Per-task test accuracy (percent) of pre-trained, fine-tuned, LoRA and Task Arithmetic, plus averages."""
    rt = ZooRuntime(zoo, device)
    names = zoo.task_names
    base = rt.base_state()
    fts = [rt.finetuned(i) for i in range(len(names))]
    rows: dict[str, dict[str, float]] = {n: {} for n in names}
    for i, n in enumerate(names):
        rows[n]["pretrained"] = 100 * rt.accuracy(base, i)
        rows[n]["finetuned"] = 100 * rt.accuracy(fts[i], i)
        if zoo.tasks[i].lora is not None:
            rows[n]["lora"] = 100 * rt.accuracy(lora_merged_state(rt, i), i)
    # lam on validation (mean accuracy over tasks), then test
    val = {}
    for lam in lambdas:  # one merge per lam, evaluated on every task
        merged = task_arithmetic(base, fts, lam)
        val[lam] = float(np.mean([rt.accuracy(merged, i, split="validation") for i in range(len(names))]))
    lam = max(val, key=lambda k: (val[k], -k))
    ta = task_arithmetic(base, fts, lam)
    for i, n in enumerate(names):
        rows[n]["task_arithmetic"] = 100 * rt.accuracy(ta, i)
    cols = sorted({c for r in rows.values() for c in r})
    avg = {c: float(np.mean([r[c] for r in rows.values() if c in r])) for c in cols}
    return {"per_task": {n: {c: round(v, 2) for c, v in r.items()} for n, r in rows.items()},
            "average": {c: round(v, 2) for c, v in avg.items()}, "task_arithmetic_lam": lam,
            "task_arithmetic_validation": {str(k): round(100 * v, 2) for k, v in val.items()}}


def format_metrics(m: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_zoo`'s output."""
    cols = list(m["average"])
    lines = ["task".ljust(12) + "".join(c[:15].rjust(16) for c in cols)]
    for n, r in list(m["per_task"].items()) + [("AVERAGE", m["average"])]:
        lines.append(n.ljust(12) + "".join(f"{r.get(c, float('nan')):16.2f}" for c in cols))
    lines.append(f"Task Arithmetic lam = {m['task_arithmetic_lam']} (chosen on validation)")
    return "\n".join(lines)
