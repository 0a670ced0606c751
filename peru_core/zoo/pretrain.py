"""Contrastive pre-training of the demo zoo's small CLIP on a held-out pool (never the test sets).

Recipe (docs/zoo.md): image-caption pairs come from the training splits of the "seen" classes (all of them in the v2
recipe, 60% in v1), shown in the build's pre-training domain (v2: 7 px images scaled back to 28 px), so the
pre-trained model is mediocre on the full-resolution test images, leaving room for fine-tuning as in PERU
(https://arxiv.org/abs/2310.01886). A text-only contrastive term over ALL class names (two templates of one class
are positives) keeps the frozen heads apart, including those of classes the pool does not show.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from peru_core.data import preprocess_uint8
from peru_core.types import Progress, report
from peru_core.zoo.finetune import warmup_cosine


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 600
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 60
    text_weight: float = 0.5  # weight of the text-only term over all class names
    seed: int = 0


@dataclass
class Captioned:
    """Pool images with, per image, its concept id (class identity shared across tasks) and its captions."""

    x: np.ndarray  # uint8 N x H x W
    concept: np.ndarray  # int64 N: index into concept_captions
    concept_captions: list[list[str]]  # per concept: one caption per template
    task_of: np.ndarray  # int64 N: task index (for balanced sampling)


def _soft_ce(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a uniform target over all positives of each row (same concept = positive)."""
    target = same.float() / same.float().sum(dim=1, keepdim=True)
    logp = F.log_softmax(logits, dim=1)
    return -(target * logp.masked_fill(~same, 0.0)).sum(dim=1).mean()  # 0 * -inf (masked self) -> 0


def pretrain(model: torch.nn.Module, tokenizer, pool: Captioned, all_concepts: Sequence[list[str]],
             all_concept_ids: Sequence[int], image_size: int, mean: Sequence[float], std: Sequence[float],
             cfg: PretrainConfig, on_progress: Progress = None) -> list[float]:
    """Train ``model`` (in place) and return the loss curve.

    ``all_concepts``: captions (one per template) of every class of every task, seen or not, for the text-only
    term; ``all_concept_ids``: their concept ids (a shared digit name across two tasks is one concept).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # tokens of every caption once; an image's caption is one of its concept's templates, drawn per step
    flat = [c for caps in pool.concept_captions for c in caps]
    starts = np.cumsum([0] + [len(c) for c in pool.concept_captions])
    tokens = tokenizer(flat).to(device)
    text_tokens = tokenizer([c for caps in all_concepts for c in caps]).to(device)
    text_starts = np.cumsum([0] + [len(c) for c in all_concepts])
    text_ids = torch.as_tensor(list(all_concept_ids), device=device)
    by_task = [np.flatnonzero(pool.task_of == t) for t in range(int(pool.task_of.max()) + 1)]
    losses: list[float] = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps)
        # balanced over tasks: draw a task per slot, then an image of it
        tasks = rng.integers(0, len(by_task), size=cfg.batch)
        idx = np.array([by_task[t][rng.integers(len(by_task[t]))] for t in tasks])
        concepts = pool.concept[idx]
        cap = starts[concepts] + rng.integers(0, np.diff(starts)[concepts])
        x = preprocess_uint8(pool.x[idx], image_size, mean, std).to(device)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens[torch.as_tensor(cap, device=device)]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        same = torch.as_tensor(concepts[:, None] == concepts[None, :], device=device)
        logits = scale * img @ txt.T
        loss = 0.5 * (_soft_ce(logits, same) + _soft_ce(logits.T, same))
        if cfg.text_weight > 0:
            # text-only term: two different templates of each class are a positive pair
            n = len(all_concepts)
            per = torch.as_tensor(np.diff(text_starts))
            a = torch.randint(0, 1 << 30, (n,), generator=gen) % per
            b = (a + 1 + torch.randint(0, 1 << 30, (n,), generator=gen) % (per - 1).clamp(min=1)) % per
            base = torch.as_tensor(text_starts[:-1])
            a, b = (base + a).to(device), (base + b).to(device)
            ta = F.normalize(model.encode_text(text_tokens[a]), dim=-1)
            tb = F.normalize(model.encode_text(text_tokens[b]), dim=-1)
            tsame = text_ids[:, None] == text_ids[None, :]
            tl = scale * ta @ tb.T
            loss = loss + cfg.text_weight * 0.5 * (_soft_ce(tl, tsame) + _soft_ce(tl.T, tsame))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == cfg.steps - 1:
            report(on_progress, (step + 1) / cfg.steps, f"pre-training step {step + 1}/{cfg.steps}, loss {loss:.3f}")
    model.eval()
    return losses
