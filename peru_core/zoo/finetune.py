"""Per-task fine-tuning of the image tower with the frozen zero-shot head: full and LoRA (PEFT).

The optimiser is the one the feasibility run chose (design.md section 4; docs/zoo.md): SGD with momentum 0.9,
lr 0.02, gradient clipping at 1.0, 300 steps of batch 128. With it the task vectors concentrate their mass in few
entries, so sparse reuse (Post-Pruning, PERU-FFT of https://arxiv.org/abs/2310.01886) behaves as in the paper.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from peru_core.data import preprocess_uint8
from peru_core.types import StateDict


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    batch: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    clip: float = 1.0
    warmup: int = 15
    seed: int = 0
    tune: str = ""  # comma-separated name fragments of the image-tower tensors to tune (e.g. "attn"); "": all


@dataclass(frozen=True)
class LoraConfigSpec:
    rank: int = 16
    alpha: float = 16.0
    lr: float = 0.1  # LoRA factors start at B = 0 and need a larger step than full weights
    llora_lr: float = 0.3  # L-LoRA: only B trains (A frozen), so it takes a larger step; 0: the same as LoRA


def warmup_cosine(step: int, base: float, warmup: int, steps: int) -> float:
    """Learning rate at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def _train(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], head: torch.Tensor, x: np.ndarray,
           y: np.ndarray, image_size: int, mean, std, cfg: FinetuneConfig, lr: float) -> None:
    rng = np.random.default_rng(cfg.seed)
    device = head.device
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, lr, cfg.warmup, cfg.steps)
        idx = rng.integers(0, len(x), size=cfg.batch)
        xb = preprocess_uint8(x[idx], image_size, mean, std).to(device)
        logits = F.normalize(model.encode_image(xb), dim=-1) @ head.T
        loss = F.cross_entropy(logits, torch.as_tensor(y[idx], device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
    model.eval()


def finetune_full(model: torch.nn.Module, head: torch.Tensor, x: np.ndarray, y: np.ndarray, image_size: int,
                  mean, std, cfg: FinetuneConfig, prefix: str = "visual.") -> StateDict:
    """Fine-tune every image-tower parameter of a copy of ``model``; return its ``prefix`` tensors."""
    m = copy.deepcopy(model)
    m.requires_grad_(False)
    parts = [p for p in cfg.tune.split(",") if p]
    params = [p for n, p in m.visual.named_parameters() if not parts or any(q in n for q in parts)]
    for p in params:
        p.requires_grad_(True)
    _train(m, params, head, x, y, image_size, mean, std, cfg, cfg.lr)
    return {k: v.detach().cpu().clone().contiguous() for k, v in m.state_dict().items() if k.startswith(prefix)}


def lora_targets(model: torch.nn.Module) -> list[str]:
    """Full names of the image tower's nn.Linear layers that run their own forward.

    ``attn.out_proj`` is an nn.Linear too, but nn.MultiheadAttention reads its weight directly and never calls it,
    so a LoRA wrapper there would stay inert; LoRA sits on the MLP layers (``mlp.c_fc``, ``mlp.c_proj``).
    """
    return [f"visual.{n}" for n, mod in model.visual.named_modules()
            if isinstance(mod, torch.nn.Linear) and not n.endswith("attn.out_proj")]


def finetune_lora(model: torch.nn.Module, head: torch.Tensor, x: np.ndarray, y: np.ndarray, image_size: int,
                  mean, std, cfg: FinetuneConfig, lora: LoraConfigSpec, out_dir: Path,
                  linearized: bool = False) -> torch.nn.Module:
    """LoRA fine-tune of a copy of ``model`` with PEFT; writes PEFT's adapter files into ``out_dir`` and returns the
    PEFT model (for evaluation).

    ``linearized``: L-LoRA (Tang et al., ICLR 2024, https://arxiv.org/abs/2310.04742), LoRA linearized around its
    initialisation (A_0, B_0). PEFT starts from B_0 = 0, so the first-order model
    ``W_0 x + (B_0 A_0 + dB A_0 + B_0 dA) x`` is ``W_0 x + dB A_0 x``: LoRA with ``lora_A`` frozen at A_0 and only
    ``lora_B`` trained. The result is an ordinary PEFT adapter, evaluated with the ordinary forward.
    """
    from peft import LoraConfig, get_peft_model

    m = copy.deepcopy(model)
    m.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # PEFT draws lora_A from the global generator
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, bias="none",
                        target_modules=lora_targets(m))
    peft_model = get_peft_model(m, config)
    if linearized:
        for n, p in peft_model.named_parameters():
            if "lora_A" in n:
                p.requires_grad_(False)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    lr = lora.llora_lr if linearized and lora.llora_lr else lora.lr
    _train(peft_model.base_model.model, params, head, x, y, image_size, mean, std, cfg, lr)
    peft_model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template; not part of the adapter
    sort_target_modules(out_dir / "adapter_config.json")
    return peft_model


def sort_target_modules(config_path: Path) -> None:
    """PEFT saves ``target_modules`` from a set, in hash order: sort it (written as PEFT writes) so a rebuild gives
    the same bytes."""
    cfg = json.loads(config_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
