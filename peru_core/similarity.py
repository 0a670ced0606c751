"""Cosine similarity of task vectors, over the whole tuned part and per layer (tensor).

The task vector of task t is ``v_t = theta_t - theta_0`` for a full fine-tune and, for a LoRA or L-LoRA adapter, the
product ``Delta_t = scale * B_t A_t`` on each target folded to a full delta (zero on every other tensor), never the
stacked factors ``(A_t, B_t)``: ``B A = (B M)(M^-1 A)`` for any invertible M, so the factors' cosine depends on how
the update was factorised, not on the update. ``cos(v_s, v_t) = <v_s, v_t> / (||v_s|| ||v_t||)``, what
task_vectors and FusionBench users compute (``torch.nn.functional.cosine_similarity`` on flattened vectors; FusionBench:
``fusion_bench/method/analysis/task_vector_cos_similarity.py``).

Inner products over the whole tuned part are sums of the per-tensor ones, so one pass over the tensors builds every
per-layer T x T Gram matrix (float64), and the flattened one is their sum: the pass holds T chunks of one tensor at a
time, never T copies of the model. For adapters the inner product of two products is taken on the r x r level,
``<s B1 A1, s' B2 A2>_F = s s' sum((B1^T B2) * (A1 A2^T))``, exact, with no dense delta formed.
PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from peru_core.errors import PeruError
from peru_core.io import LoraAdapter
from peru_core.statedict import CHUNK, tuned_keys
from peru_core.types import Progress, report

StateDicts = Mapping[str, Mapping[str, torch.Tensor]] | Sequence[Mapping[str, torch.Tensor]]


@dataclass(frozen=True, eq=False)
class Grams:
    """Per-tensor inner products of T task vectors: ``grams[l, s, t] = <v_s, v_t>`` restricted to tensor ``keys[l]``."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    grams: np.ndarray  # (L, T, T) float64

    def cosines(self, key: Optional[str] = None) -> np.ndarray:
        """The T x T cosine matrix over the whole tuned part (``key=None``) or one tensor; NaN where a task's vector
        is zero there (the cosine is undefined)."""
        g = self.grams.sum(axis=0) if key is None else self.grams[self.keys.index(key)]
        return _normalise(g)

    def per_layer(self) -> np.ndarray:
        """(L, T, T): the cosine matrix of every tensor, in ``keys`` order."""
        return np.stack([_normalise(g) for g in self.grams]) if len(self.keys) else np.empty((0, 0, 0))

    def norms(self, key: Optional[str] = None) -> np.ndarray:
        """``||v_t||`` over the whole tuned part or one tensor."""
        g = self.grams.sum(axis=0) if key is None else self.grams[self.keys.index(key)]
        return np.sqrt(np.clip(np.diag(g), 0.0, None))


def _normalise(g: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.clip(np.diag(g), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = g / np.outer(n, n)
    c[np.outer(n, n) == 0] = np.nan
    return np.clip(c, -1.0, 1.0)  # rounding can leave |cos| a few ulps above 1


def _named(finetuned: StateDicts) -> tuple[list[str], list[Mapping[str, torch.Tensor]]]:
    if isinstance(finetuned, Mapping):
        return list(finetuned.keys()), list(finetuned.values())
    return [f"task {i + 1}" for i in range(len(finetuned))], list(finetuned)


def task_vector_grams(base: Mapping[str, torch.Tensor], finetuned: StateDicts, *,
                      on_progress: Progress = None) -> Grams:
    """Per-tensor Gram matrices of the full task vectors ``theta_t - theta_0`` (``finetuned``: name -> state dict,
    or a list; every one must tune the same keys). Chunks of ``CHUNK`` values: memory is T chunks, not T models."""
    names, sds = _named(finetuned)
    keys = tuned_keys(base, sds)
    out = np.zeros((len(keys), len(sds), len(sds)))
    for i, k in enumerate(keys):
        b = base[k].reshape(-1)
        flats = [sd[k].reshape(-1) for sd in sds]
        for s in range(0, b.numel(), CHUNK):
            e = min(s + CHUNK, b.numel())
            d = torch.stack([f[s:e].to(torch.float64) for f in flats]) - b[s:e].to(torch.float64)
            out[i] += (d @ d.T).numpy()
        report(on_progress, (i + 1) / len(keys), "inner products of the task vectors")
    return Grams(tuple(names), tuple(keys), out)


def adapter_grams(adapters: Mapping[str, LoraAdapter] | Sequence[LoraAdapter]) -> Grams:
    """Per-target Gram matrices of the LoRA products ``scale * B A`` (folded deltas, never the factors), on the
    r x r level. A target one adapter lacks is a zero delta for that task."""
    names, ads = _named(adapters)  # type: ignore[arg-type]
    if not ads:
        raise PeruError("No adapters were given; pass at least one task's LoRA adapter.")
    keys = list(dict.fromkeys(k for a in ads for k in a.keys()))
    out = np.zeros((len(keys), len(ads), len(ads)))
    for i, k in enumerate(keys):
        fs = [a.factors.get(k) for a in ads]
        shapes = {f.shape for f in fs if f is not None}
        if len(shapes) > 1:
            raise PeruError(f"The adapters disagree on the shape of {k!r} ({sorted(shapes)}); use adapters of the "
                            "same base model.")
        for s, fs_ in enumerate(fs):
            for t in range(s, len(fs)):
                ft = fs[t]
                if fs_ is None or ft is None:
                    continue
                b = fs_.B.to(torch.float64).T @ ft.B.to(torch.float64)  # r_s x r_t
                a = fs_.A.to(torch.float64) @ ft.A.to(torch.float64).T  # r_s x r_t
                out[i, s, t] = out[i, t, s] = fs_.scale * ft.scale * float((b * a).sum())
    return Grams(tuple(names), tuple(keys), out)


def task_vector_cosines(base: Mapping[str, torch.Tensor], finetuned_list: StateDicts, per_layer: bool = False
                        ) -> tuple[list[str], np.ndarray]:
    """``(names, cosines)`` of the full task vectors: a T x T matrix over the whole flattened tuned part, or with
    ``per_layer`` an (L, T, T) stack in the tensors' order (:attr:`Grams.keys` of :func:`task_vector_grams`)."""
    g = task_vector_grams(base, finetuned_list)
    return list(g.names), g.per_layer() if per_layer else g.cosines()


def lora_cosines(adapters: Mapping[str, LoraAdapter] | Sequence[LoraAdapter], per_layer: bool = False
                 ) -> tuple[list[str], np.ndarray]:
    """:func:`task_vector_cosines` for LoRA / L-LoRA adapters: cosines of the products ``scale * B A``."""
    g = adapter_grams(adapters)
    return list(g.names), g.per_layer() if per_layer else g.cosines()
