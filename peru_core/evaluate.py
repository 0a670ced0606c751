"""Evaluation of a state dict on a task: top-1 accuracy and image features, batched, without gradients.

The protocol is the one PERU (https://arxiv.org/abs/2310.01886) inherits from task vectors: the image tower of the
(merged or reused) model encodes a held-out test set, and a frozen zero-shot head from the text tower classifies it.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from peru_core.errors import PeruError
from peru_core.types import StateDict

DEFAULT_BATCH = 500


def autocast(device: torch.device, precision: str = "float32") -> contextlib.AbstractContextManager:
    """The context an evaluation runs in: nothing for float32; for ``bf16`` (where the device computes it natively,
    checked by :func:`peru_core.device.check_precision`) autocast of the matrix products to bfloat16, with the features
    brought back to float32 before the head (so the argmax compares float32 logits)."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def load_tuned(model: torch.nn.Module, tuned: Mapping[str, torch.Tensor], prefix: str,
               fallback: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Copy ``tuned`` into the model's existing parameters under ``prefix`` (no rebuild, no reallocation).

    Keys of the tuned part missing from ``tuned`` take their value from ``fallback`` (the base model) when given,
    so a partial state dict means "the base model elsewhere"; without ``fallback`` they keep their current value.
    """
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    unknown = [k for k in tuned if k not in params or not k.startswith(prefix)]
    if unknown:
        raise PeruError(f"State dict key {unknown[0]!r} is not a tuned parameter of this model (prefix "
                        f"{prefix!r}); check that the checkpoint matches the zoo's architecture.")
    with torch.no_grad():
        for k, p in params.items():
            if not k.startswith(prefix):
                continue
            src = tuned.get(k)
            if src is None:
                if fallback is None:
                    continue
                src = fallback[k]
            if tuple(src.shape) != tuple(p.shape):
                raise PeruError(f"Tensor {k!r} has shape {tuple(src.shape)} but the model expects {tuple(p.shape)}; "
                                "the checkpoint is for another architecture.")
            p.copy_(src)


@torch.inference_mode()
def image_features(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = DEFAULT_BATCH,
                   device: str | torch.device | None = None, precision: str = "float32") -> torch.Tensor:
    """L2-normalized image embeddings (N x D, float32, on ``device``) of preprocessed images ``x``.

    ``x`` may already live on ``device`` (the runtime keeps small test sets there): then no batch is copied."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if len(x) == 0:
        raise PeruError("The test set is empty; give at least one image.")
    out = []
    with autocast(device, precision):
        for i in range(0, len(x), batch_size):
            out.append(model.encode_image(x[i:i + batch_size].to(device, non_blocking=True)))
    # one normalisation over all features, not one small kernel launch per batch
    return F.normalize(torch.cat(out).float(), dim=-1)


@torch.inference_mode()
def predict(model: torch.nn.Module, head: torch.Tensor, x: torch.Tensor, *,
            batch_size: int = DEFAULT_BATCH, precision: str = "float32") -> torch.Tensor:
    """Top-1 class index per image: ``argmax(normalize(encode_image(x)) @ head.T)`` (CPU int64)."""
    feats = image_features(model, x, batch_size=batch_size, device=head.device, precision=precision)
    return (feats @ head.T).argmax(dim=-1).cpu()


def accuracy_of(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correct predictions, in [0, 1]."""
    if len(labels) == 0:
        raise PeruError("The test set is empty; give at least one labelled image.")
    return float((predictions.cpu() == labels.cpu()).double().mean())


def evaluate(model: torch.nn.Module, tuned: StateDict, prefix: str, head: torch.Tensor, x: torch.Tensor,
             y: torch.Tensor, *, fallback: Optional[StateDict] = None, batch_size: int = DEFAULT_BATCH) -> float:
    """Load ``tuned`` into ``model`` and return its top-1 accuracy on ``(x, y)`` with the frozen ``head``."""
    load_tuned(model, tuned, prefix, fallback)
    return accuracy_of(predict(model, head, x, batch_size=batch_size), y)
