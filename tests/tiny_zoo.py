"""A tiny but real zoo for tests: a 8-px open_clip CLIP, two tasks, full fine-tunes, PEFT LoRA and L-LoRA adapters.

Built in seconds on the CPU; every file is written by the same libraries as the demo zoo (safetensors, peft).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 8, "layers": 1, "width": 32, "patch_size": 4, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
ARCH = "peru-test-tiny"
TASKS = {"stripes": ["horizontal", "vertical"], "blobs": ["left", "right", "middle"]}


def _images(task: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(TASKS[task]), n)
    x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        if task == "stripes":
            (x[i, ::2, :] if c == 0 else x[i, :, ::2])[...] = 250
        else:
            x[i, 2:6, [0, 6, 3][c]:[0, 6, 3][c] + 2] = 250
    return x, y.astype(np.int64)


def _llora_adapter(base: dict, targets: list[str], rank: int, seed: int, out: Path) -> None:
    """An L-LoRA fine-tune as PEFT saves it: A at its default (Kaiming) initialisation A_0, only B moved from 0."""
    from peft import LoraConfig, get_peft_model

    from peru_core.models import create_clip

    torch.manual_seed(seed + 7)
    m = create_clip(ARCH, TINY_CONFIG)
    m.load_state_dict(base)
    peft_model = get_peft_model(m, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    g = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(str(out))


def build_tiny_zoo(root: Path, seed: int = 0, lora_rank: int = 4) -> Path:
    """Write a complete zoo folder (zoo.json + checkpoints + adapters + data) under ``root`` and return it."""
    from peft import LoraConfig, get_peft_model

    from peru_core.models import create_clip

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_clip(ARCH, TINY_CONFIG)
    base = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(base, str(root / "base.safetensors"))
    visual = {k: v for k, v in base.items() if k.startswith("visual.")}
    tasks = []
    for j, (name, classes) in enumerate(TASKS.items()):
        (root / "finetuned").mkdir(exist_ok=True)
        g = torch.Generator().manual_seed(seed * 100 + j)
        ft = {k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous() for k, v in visual.items()}
        save_file(ft, str(root / "finetuned" / f"{name}.safetensors"))
        # a real PEFT adapter on the image tower's linear layers
        m = create_clip(ARCH, TINY_CONFIG)
        m.load_state_dict(base)
        # the MLP's linear layers: nn.MultiheadAttention bypasses out_proj's forward, so PEFT would not apply it
        targets = [n for n, mod in m.named_modules() if n.startswith("visual.") and isinstance(mod, torch.nn.Linear)
                   and not n.endswith("out_proj")]
        peft_model = get_peft_model(m, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=targets,
                                                  init_lora_weights=False))
        peft_model.save_pretrained(str(root / "lora" / name))
        _llora_adapter(base, targets, lora_rank, seed * 100 + j, root / "llora" / name)
        (root / "data").mkdir(exist_ok=True)
        for split, n in (("test", 24), ("val", 12)):
            x, y = _images(name, n, rng)
            np.savez(root / "data" / f"{name}_{split}.npz", x=x, y=y)
        tasks.append({"name": name, "label": name.title(), "classes": classes,
                      "finetuned": f"finetuned/{name}.safetensors", "lora": f"lora/{name}",
                      "llora": f"llora/{name}",
                      "test": {"kind": "npz", "path": f"data/{name}_test.npz"},
                      "validation": {"kind": "npz", "path": f"data/{name}_val.npz"},
                      "synthetic": True})
    manifest = {"format": 1, "name": "tiny", "description": "tiny test zoo", "architecture": ARCH,
                "model_config": TINY_CONFIG, "base": "base.safetensors", "tuned_prefix": "visual.",
                "templates": ["a photo of a {}.", "an image of {}."], "tasks": tasks}
    (root / "zoo.json").write_text(json.dumps(manifest, indent=1))
    return root
