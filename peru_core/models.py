"""open_clip CLIP models by name or custom config, and frozen zero-shot classification heads.

Heads follow the task-vectors protocol used by PERU (https://arxiv.org/abs/2310.01886): for each class, the text
tower embeds every prompt template, the embeddings are L2-normalized and averaged, the mean is normalized again,
and the stacked class vectors are scaled by ``logit_scale.exp()``; logits are ``normalize(image_features) @ head.T``.
Nothing here touches a hub: models are created with ``pretrained=None`` and weights come from local files.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F

from peru_core.errors import PeruError

_CONFIG_DIR: Optional[Path] = None
_REGISTERED: dict[str, str] = {}  # name -> canonical JSON of the config registered under it


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Register a custom open_clip architecture ``name`` from its JSON config (``embed_dim``, ``vision_cfg``,
    ``text_cfg``). Registering the same config twice is a no-op; a different config under a taken name is an error."""
    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise PeruError(f"Model config {name!r} needs 'embed_dim', 'vision_cfg' and 'text_cfg'; "
                        "write it like open_clip's model_configs/*.json.")
    canon = json.dumps(config, sort_keys=True)
    if _REGISTERED.get(name) == canon:
        return
    if name not in _REGISTERED and name in open_clip.list_models():
        raise PeruError(f"Architecture name {name!r} is already an open_clip model; give the custom config "
                        "another name.")
    # A changed config under one of our own names (tests, rebuilt zoos) replaces the earlier one.
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="peru_open_clip_configs_"))
    # open_clip's public registration path: a JSON file whose stem is the model name.
    path = _CONFIG_DIR / f"{name}.json"
    path.write_text(canon)
    open_clip.add_model_config(path)
    _REGISTERED[name] = canon


def create_clip(architecture: str, model_config: Optional[dict[str, Any]] = None,
                device: str | torch.device = "cpu") -> torch.nn.Module:
    """An open_clip CLIP with random weights (load yours with ``load_state_dict``), in eval mode on ``device``.

    ``architecture`` is an open_clip name (``"ViT-B-32"``) or, with ``model_config``, a custom name.
    """
    if model_config is not None:
        register_model_config(architecture, model_config)
    elif architecture not in open_clip.list_models():
        raise PeruError(f"Unknown architecture {architecture!r}; use an open_clip name such as ViT-B-32 "
                        "or give its model_config in zoo.json.")
    # open_clip logs a warning whenever no pretrained weights are named, which is always the case here.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(architecture, pretrained=None, device=device)
    finally:
        logger.setLevel(level)
    return model.eval()


def get_tokenizer(architecture: str) -> Any:
    """open_clip's tokenizer for ``architecture`` (the context length comes from its config)."""
    return open_clip.get_tokenizer(architecture)


def image_size(model: torch.nn.Module) -> int:
    """Side length in pixels that the model's image tower expects."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@torch.inference_mode()
def zero_shot_head(model: torch.nn.Module, tokenizer: Any, classes: Sequence[str], templates: Sequence[str],
                   device: str | torch.device | None = None) -> torch.Tensor:
    """The frozen classification head (``len(classes)`` x ``embed_dim``) built from class names and templates.

    Per class: embed ``template.format(name)`` for every template, normalize each, average, normalize again; then
    scale the stacked rows by ``logit_scale.exp()`` (task-vectors protocol).
    """
    if not classes or not templates:
        raise PeruError("A classification head needs at least one class name and one prompt template.")
    device = device or next(model.parameters()).device
    rows = []
    for name in classes:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows) * model.logit_scale.exp().float()
