"""Frozen run specs: what to compute, hashable, so they key caches and the results store.

A spec names one row of the paper's tables (Table 1 of https://arxiv.org/abs/2310.01886): a reuse mode,
which fine-tunes it starts from (full or LoRA), the merge that builds the shared model and its parameters,
and the budget knob (keep = m% for sparse task parts, rank = q for low-rank ones).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Optional

from peru_core.errors import PeruError


class Mode(str, Enum):
    PRETRAINED = "pretrained"  # theta_0 alone
    SINGLE_TASK = "single-task"  # theta_t per task (full fine-tune or merged-in LoRA)
    MERGE = "merge"  # one shared model theta_star
    POST_PRUNING = "post-pruning"  # theta_0 + top-m%(theta_t - theta_0)
    PERU_FFT = "peru-fft"  # theta_star + top-m%(theta_t - theta_star)
    PERU_LORA = "peru-lora"  # theta_0 + rank-q SVD truncation of the LoRA product
    # theta_0 + rescaler_t * (mask_t o shared task vector): one bitmask (+ rescaler) per task (peru_core/partreuse.py)
    TALL = "tall"  # TALL masks on Task Arithmetic, https://arxiv.org/abs/2405.07813
    EMR = "emr"  # EMR-Merging, https://arxiv.org/abs/2405.17461


class Source(str, Enum):
    FULL = "full"  # full fine-tunes
    LORA = "lora"  # LoRA fine-tunes (PEFT adapters)
    # L-LoRA (Tang et al., ICLR 2024, https://arxiv.org/abs/2310.04742): LoRA fine-tuned in its first-order form
    # around (A_0, B_0). With PEFT's B_0 = 0 that is LoRA with A frozen at A_0, an ordinary PEFT adapter.
    LLORA = "llora"

    @property
    def is_adapter(self) -> bool:
        """LoRA-kind fine-tunes (stored as adapters; PERU-LoRA applies to them)."""
        return self is not Source.FULL


SOURCE_TAGS = {Source.FULL: "", Source.LORA: " [LoRA]", Source.LLORA: " [L-LoRA]"}


class Scope(str, Enum):
    GLOBAL = "global"  # top-m% over the whole flattened task vector
    PER_TENSOR = "per-tensor"  # top-m% within each tensor


MODE_LABELS = {
    Mode.PRETRAINED: "Pre-trained", Mode.SINGLE_TASK: "Single-Task", Mode.MERGE: "Merge",
    Mode.POST_PRUNING: "Post-Pruning", Mode.PERU_FFT: "PERU-FFT", Mode.PERU_LORA: "PERU-LoRA",
    Mode.TALL: "TALL masks", Mode.EMR: "EMR-Merging",
}
PART_MODES = (Mode.TALL, Mode.EMR)  # a shared task vector + a bitmask (+ rescaler) per task (peru_core/partreuse.py)


@dataclass(frozen=True)
class RunSpec:
    """One method setting. ``params`` is a sorted tuple of (name, value) for the merge's knobs: a float, or a
    string for a choice parameter (one left at its default is omitted, so adding a choice to a method keeps the
    keys of its stored results)."""

    mode: Mode
    source: Source = Source.FULL
    merge: Optional[str] = None
    params: tuple[tuple[str, float | str], ...] = ()
    keep: Optional[float] = None
    rank: Optional[int] = None
    scope: Scope = Scope.GLOBAL

    @staticmethod
    def make(mode: str | Mode, source: str | Source = Source.FULL, merge: Optional[str] = None,
             params: Optional[Mapping[str, Any]] = None, keep: Optional[float] = None,
             rank: Optional[int] = None, scope: str | Scope = Scope.GLOBAL) -> "RunSpec":
        """Build a normalised, validated spec (parameters range-checked against the merge registry)."""
        try:
            mode, source, scope = Mode(mode), Source(source), Scope(scope)
        except ValueError as e:
            raise PeruError(f"{e}; check the mode, source and scope names.") from None
        checked: dict[str, float | str] = {}
        if mode in (Mode.MERGE, Mode.PERU_FFT):
            if not merge:
                raise PeruError(f"{MODE_LABELS[mode]} needs a merge method; pick one.")
            from peru_core.merging import get_method  # local: keeps spec import light

            method = get_method(merge)
            choice_defaults = {p.name: p.default for p in method.params if p.is_choice}
            checked = {k: v for k, v in method.check_params(params or {}).items()
                       if k not in choice_defaults or v != choice_defaults[k]}
        else:
            merge = None
            if mode in PART_MODES:  # TALL / EMR: their knobs are in their own registry entry
                from peru_core.partreuse import get_part_method

                checked = get_part_method(mode.value).check_params(params or {})
        if mode in (Mode.POST_PRUNING, Mode.PERU_FFT):
            if keep is None or not (0.0 <= float(keep) <= 100.0):
                raise PeruError(f"Keep m={keep} is out of range; give a percent in [0, 100].")
            keep = round(float(keep), 6)
        else:
            keep = None
        if mode is Mode.PERU_LORA:
            if rank is None or int(rank) != rank or int(rank) < 1:  # q = 0 keeps nothing: that is Pre-trained
                raise PeruError(f"Rank q={rank} is not valid; give a whole number from 1 up to the LoRA rank.")
            rank = int(rank)
            if not source.is_adapter:
                source = Source.LORA  # PERU-LoRA truncates adapters: LoRA unless L-LoRA is asked for
        else:
            rank = None
        if mode is Mode.PRETRAINED:
            source = Source.FULL  # the pre-trained model is the same whatever the fine-tunes
        if mode not in (Mode.POST_PRUNING, Mode.PERU_FFT):
            scope = Scope.GLOBAL
        values = tuple(sorted((k, v if isinstance(v, str) else float(v)) for k, v in checked.items()))
        return RunSpec(mode, source, merge, values, keep, rank, scope)

    def key(self) -> str:
        """Canonical JSON: stable across processes, used as the store key."""
        return json.dumps({"mode": self.mode.value, "source": self.source.value, "merge": self.merge,
                           "params": [list(p) for p in self.params], "keep": self.keep, "rank": self.rank,
                           "scope": self.scope.value}, sort_keys=True)

    @staticmethod
    def from_key(key: str) -> "RunSpec":
        d = json.loads(key)
        return RunSpec.make(d["mode"], d["source"], d["merge"], dict(d["params"]), d["keep"], d["rank"], d["scope"])

    @property
    def method_label(self) -> str:
        """The method family, as in the paper's tables (used for colours and legends)."""
        from peru_core.merging import get_method

        base = MODE_LABELS[self.mode]
        if self.mode is Mode.MERGE:
            base = get_method(self.merge).label
        elif self.mode is Mode.PERU_FFT:
            base = f"PERU-FFT ({get_method(self.merge).label})"
        if self.mode in (Mode.SINGLE_TASK, Mode.MERGE, *PART_MODES) or (self.mode is Mode.PERU_LORA and
                                                             self.source is Source.LLORA):
            base += SOURCE_TAGS[self.source]
        return base

    @property
    def label(self) -> str:
        """A row name like the paper's: ``PERU-FFT (Task Arithmetic) 10%`` or ``PERU-LoRA q=4``."""
        s = self.method_label
        if self.keep is not None:
            s += f" {self.keep:g}%"
            if self.scope is Scope.PER_TENSOR:
                s += " per-tensor"
        if self.rank is not None:
            s += f" q={self.rank}"
        if self.params and self.mode in (Mode.MERGE, *PART_MODES):
            s += " (" + ", ".join(f"{k}={v if isinstance(v, str) else format(v, 'g')}"
                                  for k, v in self.params) + ")"
        return s
