"""Readable names for parameter keys, for legends and pickers: ``visual.transformer.resblocks.2.attn.in_proj_weight``
-> ``block 2 · attention in-proj (q, k, v)``.

Covers open_clip (``transformer.resblocks.N``) and Hugging Face CLIP (``encoder.layers.N``) naming; a key it does
not know keeps its own words (dots become `` · ``), so every matrix still gets a distinct, recognisable name.
"""
from __future__ import annotations

import re

# the repeated block of a transformer, in the naming schemes we read
_BLOCK = re.compile(r"^(?:.*\.)?(?:transformer\.resblocks|transformer\.layers|encoder\.layers|encoder\.layer|"
                    r"resblocks|layers|blocks)\.(\d+)\.(.+)$")
# part of a key (after the block, without .weight) -> what it is
_PARTS: dict[str, str] = {
    "attn.in_proj": "attention in-proj (qkv)",
    "attn.in_proj_weight": "attention in-proj (qkv)",
    "attn.out_proj": "attention out-proj",
    "self_attn.out_proj": "attention out-proj",
    "self_attn.q_proj": "attention query",
    "self_attn.k_proj": "attention key",
    "self_attn.v_proj": "attention value",
    "mlp.c_fc": "MLP up-proj",
    "mlp.fc1": "MLP up-proj",
    "mlp.c_proj": "MLP down-proj",
    "mlp.fc2": "MLP down-proj",
    "ln_1": "layer norm 1",
    "layer_norm1": "layer norm 1",
    "ln_2": "layer norm 2",
    "layer_norm2": "layer norm 2",
    "conv1": "patch embedding",
    "embeddings.patch_embedding": "patch embedding",
    "positional_embedding": "position embedding",
    "embeddings.position_embedding": "position embedding",
    "class_embedding": "class token",
    "embeddings.class_embedding": "class token",
    "proj": "output projection",
    "visual_projection": "output projection",
    "ln_pre": "layer norm (before the blocks)",
    "pre_layrnorm": "layer norm (before the blocks)",
    "ln_post": "layer norm (after the blocks)",
    "post_layernorm": "layer norm (after the blocks)",
}


def _part(rest: str) -> str:
    rest = rest.removesuffix(".weight")
    return _PARTS.get(rest, rest.replace(".", " · "))


def readable(key: str, prefix: str = "") -> str:
    """The name a reader understands for a parameter key (``prefix``, e.g. ``"visual."``, is dropped first)."""
    k = key.removeprefix(prefix)
    m = _BLOCK.match(k)
    if m:
        return f"block {int(m.group(1))} · {_part(m.group(2))}"
    return _part(k.removeprefix("vision_model."))
