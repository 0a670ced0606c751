"""Engine versions: which code produced a stored result, so an upgrade recomputes what it must and nothing else.

A result row depends on shared code (evaluation, data, models, state-dict handling: ``CORE_VERSION``), on the reuse
mode's code (``MODE_VERSIONS``: e.g. top-m% selection for Post-Pruning and PERU-FFT, the LoRA truncation for
PERU-LoRA) and, where the spec names one, on the merge method (``MergeMethod.version`` in the registry). The
results store keys rows by ``engine_version(spec)``: bump the version of what a change alters and only those rows
are recomputed. Rules: ``docs/engine.md``, "Engine versions".
"""
from __future__ import annotations

from peru_core.spec import Mode, RunSpec

# bump when evaluation, data loading, the model, or shared state-dict code changes any result
CORE_VERSION = "1"
# bump a mode's version when its own code changes its results (the merge of PERU-FFT has its own version)
MODE_VERSIONS: dict[Mode, str] = {
    Mode.PRETRAINED: "1",
    Mode.SINGLE_TASK: "1",  # folding a (L-)LoRA adapter into the base
    Mode.MERGE: "1",  # the merge method carries its own version
    Mode.POST_PRUNING: "1",  # top-m% selection (peru_core.sparse)
    Mode.PERU_FFT: "1",  # top-m% selection on top of the merge
    Mode.PERU_LORA: "2",  # rank-q truncation (peru_core.lowrank); 2: one thread per matrix (last-bit changes)
    Mode.TALL: "1",  # TALL masks on the Task Arithmetic merge (peru_core.partreuse)
    Mode.EMR: "1",  # EMR-Merging's elected vector, masks and rescalers (peru_core.partreuse)
}


def engine_version(spec: RunSpec) -> str:
    """``core<v>/<mode><v>[/<merge><v>]``: changes exactly when code that produces ``spec``'s numbers changes."""
    parts = [f"core{CORE_VERSION}", f"{spec.mode.value}{MODE_VERSIONS[spec.mode]}"]
    if spec.merge:
        from peru_core.merging import get_method  # local: keeps this module light

        parts.append(f"{spec.merge}{get_method(spec.merge).version}")
    return "/".join(parts)


def engine_version_of_key(spec_key: str) -> str:
    """:func:`engine_version` of a stored spec key; a key that is not a valid spec (no longer registered, or not a
    spec at all) depends on the shared code only: ``core<v>``."""
    try:
        spec = RunSpec.from_key(spec_key)
    except Exception:  # any key that does not parse or validate as a spec today
        return f"core{CORE_VERSION}"
    return engine_version(spec)
