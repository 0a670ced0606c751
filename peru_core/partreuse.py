"""Reuse methods that keep a binary mask per task on one shared task vector: TALL masks and EMR-Merging.

Both serve task t as ``theta_t = theta_0 + rescaler_t * (mask_t o vector)``: the shared model theta_0, one shared
task vector (d values) and, per task, a d-entry bitmask (+ one float rescaler for EMR). They sit beside PERU
(https://arxiv.org/abs/2310.01886) on every trade-off plot; their files are described in
``docs/task_part_format.md`` (``peru-mask-v1``).

* TALL masks (Wang et al., ICML 2024, https://arxiv.org/abs/2405.07813) on Task Arithmetic:
  ``vector = tau_MTL = lam * sum_t tau_t``, ``mask_t = |theta_0 - theta_t| > tall_mask_lambda * |theta_0 + tau_MTL
  - theta_t|`` (that is ``|tau_t| > lambda |tau_MTL - tau_t|``), rescaler 1.
* EMR-Merging (Huang et al., NeurIPS 2024, https://arxiv.org/abs/2405.17461): elect ``sign(sum_t tau_t)`` (a zero
  sum elects -1), ``vector = tau_uni`` = the elected sign times the largest agreeing ``|tau_t|``;
  ``mask_t = tau_t o sign > 0``; ``rescaler_t = sum_k mean|tau_t[k]| / sum_k mean|mask_t[k] o tau_uni[k]|``
  over the tensors k.

Conventions follow FusionBench (tanganke/fusion_bench @ 54c9e8c, ``method/tall_mask/utils.py::generate_task_masks``,
the original authors' code; ``method/emr_merging/utils.py::emr_merge``): a strict ``>`` in the TALL mask (the
paper writes ``>=``); one lambda for all tasks (the paper picks lambda_t per task on validation data); EMR's
rescaler as a ratio of sums of per-tensor means (the paper's formula is a ratio of whole-vector sums). One
difference, on purpose: where EMR's masked unified vector of a task is all zero (e.g. an all-zero task vector)
FusionBench divides 0 by 0 and its model is NaN; here the rescaler is 0 and the task is served theta_0.

Adding a method of this kind is one :data:`PART_METHODS` entry (and its ``Mode`` in ``peru_core/spec.py``); the
Merge lab's sliders, the Trade-offs sweep and the CLI read the entry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from peru_core.errors import PeruError
from peru_core.merging.registry import Param
from peru_core.statedict import Layout, flat_difference, flatten, tuned_keys, work_dtype
from peru_core.types import Progress, StateDict, report


@dataclass(frozen=True, eq=False)
class MaskedParts:
    """One shared flat task vector and, per task, a packed bitmask and a rescaler over ``layout``."""

    layout: Layout
    vector: torch.Tensor  # flat, work dtype (float32; float64 for float64 checkpoints)
    masks: tuple[np.ndarray, ...]  # packed bits (numpy.packbits order), ceil(d / 8) bytes each
    rescalers: tuple[float, ...]  # float32 values (1.0 for TALL)

    @property
    def nbytes(self) -> int:
        """Host memory held (the results memo bounds its size by this)."""
        return self.vector.numel() * self.vector.element_size() + sum(m.nbytes for m in self.masks)

    def mask(self, task: int) -> torch.Tensor:
        """Task ``task``'s mask as a flat bool tensor of d entries."""
        return unpack_mask(self.masks[task], self.layout.size)

    def kept(self, task: int) -> int:
        """Entries of the shared vector task ``task`` uses (ones in its mask)."""
        return int(np.unpackbits(self.masks[task], count=self.layout.size).sum())

    def delta(self, task: int) -> torch.Tensor:
        """``vector o mask_t * rescaler_t``, flat (the order of FusionBench's EMR modulator)."""
        scale = torch.tensor(self.rescalers[task], dtype=torch.float32).to(self.vector.dtype)
        return self.vector * self.mask(task) * scale

    def model(self, base: Mapping[str, torch.Tensor], task: int) -> StateDict:
        """``theta_0 + delta_t`` over the layout's keys, in ``base``'s dtypes (other keys of ``base`` as they are)."""
        return apply_delta(base, self.delta(task), self.layout)


def unpack_mask(bits: np.ndarray, d: int) -> torch.Tensor:
    """A packed bitmask (numpy.packbits order, as stored in ``peru-mask-v1`` files) as a flat bool tensor of d."""
    return torch.from_numpy(np.unpackbits(bits, count=d).view(np.bool_))


def apply_delta(base: Mapping[str, torch.Tensor], delta: torch.Tensor, layout: Layout) -> StateDict:
    """``base[k] + delta[k]`` for the layout's keys (computed in the delta's dtype, cast back to base's)."""
    out = dict(base)
    for k, s, e in layout.spans():
        out[k] = (base[k].to(delta.dtype) + delta[s:e].view(base[k].shape)).to(base[k].dtype)
    return out


def _setup(base: StateDict, finetuned: Sequence[StateDict]) -> tuple[Layout, torch.dtype]:
    if not finetuned:
        raise PeruError("No fine-tuned models were given; pass at least one task.")
    keys = tuned_keys(base, finetuned)
    layout = Layout.of(base, keys)
    return layout, work_dtype(layout.dtypes[0]) if layout.dtypes else torch.float32


def _sum_of_task_vectors(base: StateDict, finetuned: Sequence[StateDict], layout: Layout,
                         dtype: torch.dtype) -> torch.Tensor:
    """``0 + tau_1 + ... + tau_T`` in this order (FusionBench's ``state_dict_sum``)."""
    total = torch.zeros(layout.size, dtype=dtype)
    for ft in finetuned:
        total += flat_difference(ft, base, layout, dtype=dtype)
    return total


def tall_masks(base: StateDict, finetuned: Sequence[StateDict], *, lam: float, tall_mask_lambda: float,
               on_progress: Progress = None) -> MaskedParts:
    """TALL masks on Task Arithmetic (https://arxiv.org/abs/2405.07813): ``tau_MTL = lam * sum_t tau_t`` and
    ``mask_t = |theta_0 - theta_t| > tall_mask_lambda * |theta_0 + tau_MTL - theta_t|`` (FusionBench's
    ``generate_task_masks``; the authors' code)."""
    layout, dtype = _setup(base, finetuned)
    vector = _sum_of_task_vectors(base, finetuned, layout, dtype) * lam
    ptm = flatten(base, layout, dtype=dtype)
    multi = ptm + vector
    masks = []
    for t, ft in enumerate(finetuned):
        report(on_progress, t / len(finetuned), f"TALL mask of task {t + 1}/{len(finetuned)}")
        flat_ft = flatten(ft, layout, dtype=dtype)
        mask = (ptm - flat_ft).abs() > (multi - flat_ft).abs() * tall_mask_lambda
        masks.append(np.packbits(mask.numpy()))
    report(on_progress, 1.0, "TALL masks done")
    return MaskedParts(layout, vector, tuple(masks), (1.0,) * len(finetuned))


def _sum_of_means(flat: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``sum_k mean(flat[k])`` over the tensors, accumulated in float32 in key order (as FusionBench's loop)."""
    acc = torch.zeros((), dtype=torch.float32)
    for _, s, e in layout.spans():
        acc += torch.mean(flat[s:e])
    return acc


def emr_merging(base: StateDict, finetuned: Sequence[StateDict], *, on_progress: Progress = None) -> MaskedParts:
    """EMR-Merging (https://arxiv.org/abs/2405.17461): elect, mask, rescale (FusionBench's ``emr_merge``)."""
    layout, dtype = _setup(base, finetuned)
    T = len(finetuned)
    flag = torch.where(_sum_of_task_vectors(base, finetuned, layout, dtype) > 0, 1.0, -1.0).to(dtype)
    largest = torch.zeros(layout.size, dtype=dtype)
    masks, scales = [], []
    for t, ft in enumerate(finetuned):
        report(on_progress, t / (T + 1), f"EMR mask of task {t + 1}/{T}")
        tau = flat_difference(ft, base, layout, dtype=dtype)
        mask = (tau * flag) > 0
        torch.maximum(largest, (tau * mask).abs(), out=largest)
        masks.append(np.packbits(mask.numpy()))
        scales.append(_sum_of_means(tau.abs(), layout))
    vector = largest * flag
    parts = MaskedParts(layout, vector, tuple(masks), (0.0,) * T)
    rescalers = []
    for t in range(T):
        masked = _sum_of_means((vector * parts.mask(t)).abs(), layout)
        # an empty masked vector serves theta_0 whatever the rescaler; 0 instead of FusionBench's 0/0 = NaN
        rescalers.append(float(scales[t] / masked) if masked > 0 else 0.0)
    report(on_progress, 1.0, "EMR-Merging done")
    return MaskedParts(layout, vector, tuple(masks), tuple(rescalers))


@dataclass(frozen=True)
class PartMethod:
    """A reuse method with a shared task vector and a bitmask (+ rescaler) per task; ``name`` is its Mode value."""

    name: str
    label: str
    paper: str
    summary: str
    params: tuple[Param, ...]
    fn: Callable[..., MaskedParts]
    rescaled: bool  # whether each task part stores a rescaler
    merge: Optional[str] = None  # the registered merge whose task vector it masks (its row sits beside it)
    merge_params: tuple[str, ...] = ()  # which of ``params`` are that merge's

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: Mapping[str, Any]) -> dict[str, float | int]:
        """Fill defaults, reject unknown names, range-check values (a one-sentence PeruError)."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise PeruError(f"{self.label} has no parameter {unknown[0]!r}; its parameters are: "
                            f"{', '.join(known) or 'none'}.")
        return {n: p.check(params.get(n, p.default)) for n, p in known.items()}

    def merge_spec_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters of :attr:`merge` within ``params`` (e.g. TALL's ``lam`` is Task Arithmetic's)."""
        return {k: params[k] for k in self.merge_params if k in params}

    def task_params(self, d: int) -> int:
        """Per-task count on the #params axis: a d-entry bitmask is d bits = ceil(d / 32) float32 parameters, plus
        the rescaler (the unit the TALL and EMR papers compare storage in)."""
        return math.ceil(d / 32) + (1 if self.rescaled else 0)

    def __call__(self, base: StateDict, finetuned: Sequence[StateDict], *, on_progress: Progress = None,
                 **params: Any) -> MaskedParts:
        return self.fn(base, list(finetuned), on_progress=on_progress, **self.check_params(params))


PART_METHODS: dict[str, PartMethod] = {m.name: m for m in (
    PartMethod("tall", "TALL masks", "https://arxiv.org/abs/2405.07813",
               "Task Arithmetic's merged vector, masked per task where the task dominates it (1 bit per entry).",
               (Param("lam", 1.0, 0.0, 2.0, "scale of the summed task vectors (Task Arithmetic; FusionBench: 1)",
                      step=0.05, label="Scaling λ"),
                Param("tall_mask_lambda", 0.6, 0.0, 2.0, "mask threshold: keep entry i for task t where "
                      "|tau_t| > lambda |tau_MTL - tau_t| (FusionBench default 0.6)", step=0.05,
                      label="Mask threshold λ_t")),
               tall_masks, rescaled=False, merge="task_arithmetic", merge_params=("lam",)),
    PartMethod("emr", "EMR-Merging", "https://arxiv.org/abs/2405.17461",
               "A unified vector (elected sign, largest agreeing magnitude), masked and rescaled per task.",
               (), emr_merging, rescaled=True),
)}


def get_part_method(name: str) -> PartMethod:
    """The registered mask-reuse method ``name`` (``tall`` or ``emr``); a PeruError naming the others."""
    try:
        return PART_METHODS[name]
    except KeyError:
        raise PeruError(f"Unknown reuse method {name!r}; use one of: {', '.join(PART_METHODS)}.") from None
