"""Frozen run specs the pages ask for: references, the Merge lab's setting, the Trade-offs sweep, t-SNE panels."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from peru_core.merging import get_method
from peru_core.partreuse import PART_METHODS, PartMethod
from peru_core.spec import SOURCE_TAGS, RunSpec, Source
from peru_core.zoo.manifest import Zoo
from ui.widgets import usable_methods

# TALL masks, EMR-Merging: a bitmask per task on a shared task vector (peru_core/partreuse.py); on adapters they
# mask the folded updates B A
_MASKED = {m.name: f"{m.label} (a bitmask per task)" for m in PART_METHODS.values()}
# the reuse modes per kind of fine-tune: every adapter kind (LoRA, L-LoRA) offers the same ones; PERU's last (the
# Merge lab's default)
REUSE_MODES = {
    "full": {"merge": "None (the merge alone)", **_MASKED, "post-pruning": "Post-Pruning", "peru-fft": "PERU-FFT"},
    **{s.value: {"merge": "None (the merge alone)", **_MASKED, "peru-lora": "PERU-LoRA"} for s in Source
       if s.is_adapter},
}
DEFAULT_KEEPS = (1.0, 5.0, 10.0, 20.0, 40.0)
KEEP_GRID = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0)


def references(source: str) -> list[RunSpec]:
    """Pre-trained and Single-Task (of the chosen fine-tunes): the two ends of every comparison."""
    return [RunSpec.make("pretrained"), RunSpec.make("single-task", source)]


MERGE_MODES = ("merge", "peru-fft")  # the reuse modes whose shared model is a merge (the others ignore it)


def uses_merge(mode: str) -> bool:
    """Whether ``mode`` depends on the merge method and its parameters (Post-Pruning and PERU-LoRA start from
    the pre-trained model)."""
    return mode in MERGE_MODES


def part_method(mode: str) -> Optional[PartMethod]:
    """The registry entry of a mask-reuse mode (TALL, EMR): its Params feed the Merge lab's sliders; else None."""
    return PART_METHODS.get(mode)


def lab(source: str, merge: Optional[str], params: Mapping[str, Any], mode: str, keep: Optional[float],
        rank: Optional[int], scope: str) -> list[RunSpec]:
    """The Merge lab's rows: references, the merge (when the mode builds on it), and the chosen reuse; the last
    row is the chosen setting. A setting the mode ignores changes nothing here (so nothing looks uncomputed)."""
    specs = references(source)
    if uses_merge(mode):
        specs.append(RunSpec.make("merge", source, merge, params))
    if mode == "post-pruning":
        specs.append(RunSpec.make("post-pruning", source, keep=keep, scope=scope))
    elif mode == "peru-fft":
        specs.append(RunSpec.make("peru-fft", source, merge, params, keep=keep, scope=scope))
    elif mode == "peru-lora":
        specs.append(RunSpec.make("peru-lora", source, rank=rank))
    elif part_method(mode) is not None:
        specs += _masked_specs(mode, source, params)
    return specs


def _masked_specs(mode: str, source: str, params: Optional[Mapping[str, Any]]) -> list[RunSpec]:
    """A mask-reuse spec, after the merge whose task vector it masks (TALL: Task Arithmetic at the same lam)."""
    method = PART_METHODS[mode]
    spec = RunSpec.make(mode, source, params=params)
    if method.merge is None:
        return [spec]
    return [RunSpec.make("merge", source, method.merge, method.merge_spec_params(dict(spec.params))), spec]


def method_options(source: str, zoo: Zoo) -> dict[str, str]:
    """Trade-offs choices: id -> label (``post-pruning``, ``peru-fft:<merge>``, ``merge:<merge>``, ``peru-lora``,
    ``tall``, ``emr``)."""
    merges = usable_methods(zoo)
    out: dict[str, str] = {}
    if source == "full":
        out["post-pruning"] = "Post-Pruning"
        out.update({f"peru-fft:{m.name}": f"PERU-FFT ({m.label})" for m in merges})
    else:
        out["peru-lora"] = "PERU-LoRA"
    out.update({m.name: m.label + SOURCE_TAGS[Source(source)] for m in PART_METHODS.values()})
    out.update({f"merge:{m.name}": m.label + SOURCE_TAGS[Source(source)] for m in merges})
    return out


def default_methods(source: str) -> list[str]:
    return (["post-pruning", "peru-fft:task_arithmetic", "merge:task_arithmetic"] if source == "full"
            else ["peru-lora", "merge:task_arithmetic"])


def rank_grid(r: int) -> list[int]:
    """q = 1, 2, 4, ... up to r, and r itself."""
    out, q = [], 1
    while q < r:
        out.append(q)
        q *= 2
    return out + ([r] if r >= 1 else [])


def sweep(source: str, methods: Sequence[str], keeps: Sequence[float], ranks: Sequence[int],
          scope: str) -> list[RunSpec]:
    """References plus every chosen method over its knob's grid (merges use their registry defaults)."""
    specs = references(source)
    for m in methods:
        kind, _, merge = m.partition(":")
        params = get_method(merge).defaults() if merge else None
        if kind == "post-pruning":
            specs += [RunSpec.make("post-pruning", source, keep=k, scope=scope) for k in keeps]
        elif kind == "peru-fft":
            specs += [RunSpec.make("peru-fft", source, merge, params, keep=k, scope=scope) for k in keeps]
        elif kind == "peru-lora":
            specs += [RunSpec.make("peru-lora", source, rank=q) for q in ranks]
        elif kind == "merge":
            specs.append(RunSpec.make("merge", source, merge, params))
        elif kind in PART_METHODS:  # one point each, at the registry defaults
            specs.append(RunSpec.make(kind, source))
    return list(dict.fromkeys(specs))


def panel_options(source: str, zoo: Zoo) -> dict[str, str]:
    """Embeddings panels: the Trade-offs methods plus the two references."""
    return {"pretrained": "Pre-trained", **method_options(source, zoo), "single-task": "Single-Task"}


def default_panels(source: str, zoo: Zoo) -> list[str]:
    """The paper's Figure 3 (merges, Post-Pruning, PERU-FFT) or Figure 4 (merges, PERU-LoRA), with Figure 3's
    merges, Task Arithmetic and TIES (the others are offered, not preselected)."""
    opts = method_options(source, zoo)
    merges = [o for o in opts if o.startswith("merge:") and o[6:] in ("task_arithmetic", "ties")]  # Figure 3's
    return merges + (["post-pruning", "peru-fft:task_arithmetic"] if source == "full" else ["peru-lora"])


def panel(option: str, source: str, keep: float, rank: int) -> RunSpec:
    """The spec of one Embeddings panel (merges with registry defaults, PERU-FFT with Task Arithmetic's)."""
    kind, _, merge = option.partition(":")
    params = get_method(merge).defaults() if merge else None
    if kind in ("pretrained", "single-task"):
        return RunSpec.make(kind, source)
    if kind == "merge":
        return RunSpec.make("merge", source, merge, params)
    if kind == "post-pruning":
        return RunSpec.make("post-pruning", source, keep=keep)
    if kind == "peru-fft":
        return RunSpec.make("peru-fft", source, merge, params, keep=keep)
    if kind in PART_METHODS:
        return RunSpec.make(kind, source)
    return RunSpec.make("peru-lora", source, rank=rank)
