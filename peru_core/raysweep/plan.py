"""Which specs go together: specs that reuse one expensive intermediate run on the same worker, one after another.

A worker's :class:`~peru_core.zoo.runtime.ZooRuntime` memoises merged models, prepared top-m% selectors and LoRA
SVDs (``experiments._Memo``), so PERU-FFT at every m after one merge, or PERU-LoRA at every q after one SVD per task,
pays for that shared work once when the specs land on the same worker (PERU, https://arxiv.org/abs/2310.01886,
Section 3: one shared model, cheap task parts on top of it).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from peru_core.spec import Mode, RunSpec


@dataclass(frozen=True)
class Group:
    """Specs that share one piece of work (``shared``), run in order on one worker."""

    shared: tuple
    specs: tuple[RunSpec, ...]

    @property
    def weight(self) -> int:
        """A cost estimate for ordering: one per spec, plus one for the shared work when there is any."""
        return len(self.specs) + (self.shared[0] != "alone")


def shared_work(spec: RunSpec) -> tuple:
    """The key of the expensive intermediate ``spec`` reuses (a spec alone when it reuses nothing heavy)."""
    if spec.mode in (Mode.MERGE, Mode.PERU_FFT):  # theta_star, then the T selectors of its difference vectors
        return ("merged", spec.source.value, spec.merge, spec.params)
    if spec.mode is Mode.POST_PRUNING:  # the T selectors of theta_t - theta_0
        return ("pruning", spec.source.value, spec.scope.value)
    if spec.mode is Mode.PERU_LORA:  # the QR-core SVD of every adapter product
        return ("lora-svd", spec.source.value)
    return ("alone", spec.key())


def _makespan(groups: Sequence[Group], workers: int) -> int:
    """Finish time, in weight units, of handing the groups (heaviest first) to the first free of ``workers``."""
    free = [0] * max(1, workers)
    for g in sorted(groups, key=lambda g: -g.weight):
        heapq.heappush(free, heapq.heappop(free) + g.weight)
    return max(free)


def group_specs(specs: Sequence[RunSpec], workers: int = 1) -> list[Group]:
    """Group ``specs`` (duplicates dropped) by shared work, heaviest group first (longest-processing-time order,
    which keeps the last worker's tail short). Groups are then halved, largest first, and the plan with the
    earliest finish on ``workers`` is kept: a big group split over two workers pays its shared work twice but
    no longer holds up the pool."""
    by_key: dict[tuple, list[RunSpec]] = {}
    for spec in dict.fromkeys(specs):
        by_key.setdefault(shared_work(spec), []).append(spec)
    groups = [Group(k, tuple(v)) for k, v in by_key.items()]
    best, best_time = groups, _makespan(groups, workers)
    while groups and workers > 1:
        big = max(groups, key=lambda g: len(g.specs))
        if len(big.specs) < 2:
            break
        i, half = groups.index(big), (len(big.specs) + 1) // 2
        groups = groups[:i] + [Group(big.shared, big.specs[:half]), Group(big.shared, big.specs[half:])] + \
            groups[i + 1:]
        if _makespan(groups, workers) < best_time:
            best, best_time = groups, _makespan(groups, workers)
    order = {g: j for j, g in enumerate(best)}
    return sorted(best, key=lambda g: (-g.weight, order[g]))
