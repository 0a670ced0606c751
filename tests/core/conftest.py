"""Tiny state dicts and adapters for the engine tests (a few hundred values: every test runs in milliseconds)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from peru_core.io import save_state_dict
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime

SHAPES = {
    "visual.conv1.weight": (4, 3, 2, 2),
    "visual.blocks.0.attn.in_proj_weight": (12, 4),
    "visual.blocks.0.mlp.c_fc.weight": (8, 4),
    "visual.blocks.0.mlp.c_fc.bias": (8,),
    "visual.blocks.0.mlp.c_proj.weight": (4, 8),
    "visual.ln_post.weight": (4,),
    "text.proj": (3, 3),
}
PREFIX = "visual."


def random_sd(seed: int, shapes=SHAPES, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def finetune(base: dict, seed: int, prefix: str = "", scale: float = 0.1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return {k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(v.dtype)
            for k, v in base.items() if k.startswith(prefix)}


@pytest.fixture
def base() -> dict[str, torch.Tensor]:
    return random_sd(0)


@pytest.fixture
def finetuned(base) -> list[dict[str, torch.Tensor]]:
    """Three full fine-tunes (every key of the base)."""
    return [finetune(base, t) for t in range(3)]


@pytest.fixture
def tuned(base) -> list[dict[str, torch.Tensor]]:
    """Three partial fine-tunes holding only the ``visual.`` part, as a zoo stores them."""
    return [finetune(base, t, PREFIX) for t in range(3)]


def write_adapter(folder: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], **config) -> Path:
    """A PEFT-layout adapter folder: ``{module: (A r x in, B out x r)}`` plus ``adapter_config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = {}
    for module, (A, B) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A
        tensors[f"base_model.model.{module}.lora_B.weight"] = B
    save_state_dict(tensors, folder / "adapter_model.safetensors")
    return folder


def random_factors(seed: int, shapes: dict[str, tuple[int, int]], r: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(r, i, generator=g), torch.randn(o, r, generator=g)) for m, (o, i) in shapes.items()}


LORA_TARGETS = {"visual.blocks.0.mlp.c_fc": (8, 4), "visual.blocks.0.mlp.c_proj": (4, 8)}


def flat(sd, keys):
    """The tensors ``keys`` of ``sd`` as one flat vector (reference implementations work on it)."""
    return torch.cat([sd[k].reshape(-1) for k in keys])


def unflat(vec, like, keys):
    """Inverse of :func:`flat`: views of ``vec`` shaped like ``like``."""
    out, o = {}, 0
    for k in keys:
        out[k] = vec[o:o + like[k].numel()].view(like[k].shape)
        o += like[k].numel()
    return out


@pytest.fixture(scope="module")
def rt(tiny_zoo_dir):
    """The tiny zoo's runtime on the default device, one per test module."""
    return ZooRuntime(load_zoo(tiny_zoo_dir))


@pytest.fixture(scope="module")
def rt16(tiny_zoo_dir, tmp_path_factory):
    """A copy of the tiny zoo whose base checkpoint is float16 (the fine-tunes stay float32)."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path_factory.mktemp("zoo16") / "zoo"
    shutil.copytree(tiny_zoo_dir, copy)
    zoo = load_zoo(copy)
    save_file({k: v.half() for k, v in load_file(str(zoo.base)).items()}, str(zoo.base))
    return ZooRuntime(load_zoo(copy))
