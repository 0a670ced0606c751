"""AdaMerging: Task Arithmetic whose coefficients are learned at test time by entropy minimisation.

Paper: Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
https://arxiv.org/abs/2310.02575 ; the strongest data-driven baseline PERU (https://arxiv.org/abs/2310.01886) is
compared with in the literature.

``theta = theta_0 + sum_t lambda_t^l tau_t^l``, one coefficient per task (task-wise) or per task and tuned tensor
(layer-wise, a "layer" being each tuned tensor, as FusionBench counts them), all starting at ``init``. Each step
draws one shuffled batch of **unlabelled test images** per task, computes the Shannon entropy of the merged model's
predictions (mean over the batch), back-propagates each task's entropy into the coefficients (the gradients add up)
and takes one Adam step. The result is the merge with the final coefficients. It trains on the images it is then
scored on (never their labels): that is the method, and why the registry marks it ``test_time``.

Equal to FusionBench's ``TaskWiseAdaMergingAlgorithm`` / ``LayerWiseAdaMergingAlgorithm`` (tanganke/fusion_bench,
fusion_bench/method/adamerging/, models/wrappers/{task,layer}_wise_fusion.py) with its CLIP defaults
(config/method/adamerging/clip.yaml: Adam, lr 1e-3, init 0.3, batch 16, no clamping) except the number of steps:
FusionBench runs 1000; the default here is 100, about 35 s on the demo zoo (8 tasks) on two CPU cores
(docs/engine.md).
The test images come from :meth:`peru_core.zoo.context.ZooContext.test_batches`, the differentiable forward from
:meth:`~peru_core.zoo.context.ZooContext.logits_fn`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.merging.registry import MergeContext, Param, merge_method
from peru_core.statedict import tuned_keys
from peru_core.types import Progress, StateDict, report

STEPS_DEFAULT = 100  # FusionBench: 1000 (max_steps); see the module docstring


def entropy_loss(logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean Shannon entropy of ``softmax(logits)`` over the batch (FusionBench's ``entropy_loss``: ``log(p + eps)``)."""
    p = torch.softmax(logits, dim=-1)
    return -torch.sum(p * torch.log(p + eps), dim=-1).mean()


def merge_with(base: StateDict, task_vectors: Sequence[StateDict], coef: torch.Tensor,
               keys: Sequence[str]) -> StateDict:
    """``theta_0 + sum_t coef[t, l] tau_t`` per key ``l`` (``coef`` T x L; a T-vector is task-wise), added task by
    task as FusionBench does (differentiable in ``coef``)."""
    out = {}
    for i, key in enumerate(keys):
        merged = base[key]
        for t, tv in enumerate(task_vectors):
            merged = merged + tv[key] * (coef[t] if coef.dim() == 1 else coef[t, i])
        out[key] = merged
    return out


def adamerging_coefficients(base: StateDict, finetuned: Sequence[StateDict], context: MergeContext, *,
                            granularity: str, steps: int, lr: float, batch: int, init: float, seed: int,
                            on_progress: Progress = None, device: DeviceLike = None
                            ) -> tuple[torch.Tensor, list[float]]:
    """The learned coefficients (T or T x L, keys in :func:`peru_core.statedict.tuned_keys` order) and the mean
    entropy over tasks at each step (before that step's update)."""
    device = resolve_device(device)
    keys = tuned_keys(base, finetuned)
    b = {k: base[k].to(device, torch.float32) for k in keys}
    tvs = [{k: sd[k].to(device, torch.float32) - b[k] for k in keys} for sd in finetuned]
    shape = (len(finetuned),) if granularity == "task" else (len(finetuned), len(keys))
    coef = torch.full(shape, float(init), dtype=torch.float32, device=device, requires_grad=True)
    opt = torch.optim.Adam([coef], lr=lr)
    batches = [context.test_batches(t, batch, seed) for t in range(len(finetuned))]
    forwards = [context.logits_fn(t) for t in range(len(finetuned))]
    history = []
    for step in range(steps):
        merged = merge_with(b, tvs, coef, keys)
        total = 0.0
        for t in range(len(finetuned)):
            loss = entropy_loss(forwards[t](merged, next(batches[t])))
            loss.backward(retain_graph=t < len(finetuned) - 1)  # one graph of the merge, T backward passes
            total += float(loss.detach())
        opt.step()
        opt.zero_grad()
        history.append(total / len(finetuned))
        report(on_progress, (step + 1) / steps,
               f"AdaMerging (training on test images): step {step + 1}/{steps}, entropy {history[-1]:.4f}")
    return coef.detach(), history


@merge_method("adamerging", label="AdaMerging (trains at test time)", paper="https://arxiv.org/abs/2310.02575",
              params=(Param.choice("granularity", "layer", ("layer", "task"),
                                   "one coefficient per task and tuned tensor, or one per task", label="Coefficients",
                                   labels=("per task and layer (layer-wise AdaMerging)",
                                           "per task (task-wise AdaMerging)")),
                      Param("steps", STEPS_DEFAULT, 1, 1000, "Adam steps, each on one batch per task (FusionBench: "
                            "1000)", step=1, integer=True, label="Training steps"),
                      Param("lr", 1e-3, 1e-4, 1e-1, "Adam learning rate of the coefficients (FusionBench: 0.001)",
                            step=1e-4, label="Learning rate"),
                      Param("batch", 16, 1, 256, "unlabelled test images per task in each step (FusionBench: 16)",
                            step=1, integer=True, label="Batch per task", unit="images"),
                      Param("init", 0.3, 0.0, 1.0, "starting value of every coefficient (FusionBench: 0.3)",
                            step=0.05, label="Initial coefficient"),
                      Param("seed", 0, 0, 9999, "seed of the shuffled test batches", step=1, integer=True,
                            label="Seed")),
              needs=("test_images",), test_time=True,
              summary="Task Arithmetic with coefficients learned at test time: minimises the entropy of the merged "
                      "model's predictions on the unlabelled test images (it trains on the images it is scored on).")
def adamerging(base: StateDict, finetuned: Sequence[StateDict], *, granularity: str, steps: int, lr: float,
               batch: int, init: float, seed: int, context: Optional[MergeContext] = None,
               on_progress: Progress = None, device: DeviceLike = None) -> StateDict:
    """AdaMerging (task- or layer-wise) on the context's unlabelled test images; the merge in host memory."""
    coef, _ = adamerging_coefficients(base, finetuned, context, granularity=granularity, steps=steps, lr=lr,
                                      batch=batch, init=init, seed=seed, on_progress=on_progress, device=device)
    keys = tuned_keys(base, finetuned)
    with torch.no_grad():
        merged = merge_with({k: base[k].float() for k in keys},
                            [{k: sd[k].float() - base[k].float() for k in keys} for sd in finetuned], coef.cpu(), keys)
    return {k: merged[k].to(base[k].dtype) for k in keys}
