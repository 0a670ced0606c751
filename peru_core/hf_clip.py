"""Hugging Face CLIP key layout <-> open_clip, both directions, without importing ``transformers``.

The public task fine-tunes (e.g. the 8 tasks of PERU, https://arxiv.org/abs/2310.01886) often ship as
``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` / ``CLIPModel`` checkpoints. Their weights are the same
numbers as open_clip's, renamed; attention differs only in packing: HF keeps ``q_proj``, ``k_proj``, ``v_proj``
while open_clip (``nn.MultiheadAttention``) stacks them as row blocks ``[q; k; v]`` of ``in_proj_weight``/``_bias``.
``visual_projection.weight`` (out x width) is open_clip's ``visual.proj`` (width x out) transposed, and likewise
``text_projection``.

What the weights do not say: the activation. OpenAI CLIP (and HF's default ``hidden_act="quick_gelu"``) needs an
open_clip ``*-quickgelu`` architecture; :func:`suggest_architecture` reads it from an HF ``config.json``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Optional

import torch

from peru_core.errors import PeruError
from peru_core.types import StateDict

OPEN_CLIP, HF_CLIP, UNKNOWN = "open_clip", "hf_clip", "unknown"
_QKV = ("q_proj", "k_proj", "v_proj")
# per-layer names: HF -> open_clip (q/k/v handled apart: they pack into in_proj)
_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
          "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
# tower-level names: HF suffix after the tower prefix -> open_clip suffix after its prefix
_VISION = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
           "embeddings.position_embedding.weight": "positional_embedding",
           "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",  # sic: HF's spelling
           "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias"}
_TEXT = {"embeddings.token_embedding.weight": "token_embedding.weight",
         "embeddings.position_embedding.weight": "positional_embedding",
         "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_IGNORED = re.compile(r"(^|\.)position_ids$")  # an index buffer, not a weight
_HF_LAYER = re.compile(r"^(?P<tower>vision|text)_model\.encoder\.layers\.(?P<i>\d+)\.(?P<rest>.+)\.(?P<p>weight|bias)$")
# the same, found inside a PEFT module name (``base_model.model.vision_model.encoder.layers.3.self_attn.q_proj``)
_HF_LAYER_IN = re.compile(r"(?:^|\.)(?:(?P<tower>vision|text)_model\.)?encoder\.layers\.(?P<i>\d+)\.(?P<rest>.+)\.weight$")


def detect_layout(keys: Any) -> str:
    """``"open_clip"``, ``"hf_clip"`` (transformers' CLIP names) or ``"unknown"`` for a state dict's keys."""
    keys = list(_strip_wrappers(dict.fromkeys(keys)))  # type: ignore[arg-type]
    if any(k.startswith(("vision_model.", "text_model.")) or k == "visual_projection.weight" for k in keys):
        return HF_CLIP
    if any(k.startswith("visual.") or k.startswith("transformer.resblocks.") or k == "token_embedding.weight"
           for k in keys):
        return OPEN_CLIP
    return UNKNOWN


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a common wrapper prefix (``module.``, ``model.``, ``base_model.model.``, ...) before the CLIP names."""
    anchors = ("vision_model.embeddings.patch_embedding.weight", "text_model.embeddings.token_embedding.weight",
               "visual.conv1.weight", "token_embedding.weight", "embeddings.patch_embedding.weight", "conv1.weight")
    for anchor in anchors:
        hits = [k[: -len(anchor)] for k in sd if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")]
        if hits:
            p = min(hits, key=len)
            out = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)} if p else dict(sd)
            if anchor == "embeddings.patch_embedding.weight":
                out = {"vision_model." + k: v for k, v in out.items()}  # a bare CLIPVisionTransformer
            if anchor == "conv1.weight":
                out = {"visual." + k: v for k, v in out.items()}  # a bare open_clip VisionTransformer
            return out
    return dict(sd)


def hf_to_open_clip(state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> StateDict:
    """Rename (and pack q/k/v of) an HF CLIP state dict to open_clip names; tensors keep their dtype.

    Vision keys land under ``visual.``; text keys (a whole ``CLIPModel``) at open_clip's root. With ``strict``, an
    HF key this mapping does not know raises :class:`PeruError` rather than being silently dropped.
    """
    sd = _strip_wrappers(state_dict)
    out: StateDict = {}
    packs: dict[str, dict[str, torch.Tensor]] = {}  # in_proj name -> {q_proj: .., k_proj: .., v_proj: ..}
    unknown: list[str] = []
    for k, v in sd.items():
        if _IGNORED.search(k):
            continue
        if k == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif k == "logit_scale":
            out[k] = v
        elif m := _HF_LAYER.match(k):
            root = "visual.transformer" if m["tower"] == "vision" else "transformer"
            block, rest, p = f"{root}.resblocks.{m['i']}", m["rest"], m["p"]
            if rest.startswith("self_attn.") and rest[len("self_attn."):] in _QKV:
                packs.setdefault(f"{block}.attn.in_proj_{p}", {})[rest[len("self_attn."):]] = v
            elif rest in _LAYER:
                out[f"{block}.{_LAYER[rest]}.{p}"] = v
            else:
                unknown.append(k)
        elif k.startswith("vision_model.") and k[len("vision_model."):] in _VISION:
            out["visual." + _VISION[k[len("vision_model."):]]] = v
        elif k.startswith("text_model.") and k[len("text_model."):] in _TEXT:
            out[_TEXT[k[len("text_model."):]]] = v
        else:
            unknown.append(k)
    for name, parts in packs.items():
        if set(parts) != set(_QKV):
            missing = sorted(set(_QKV) - set(parts))
            raise PeruError(f"The HF checkpoint has only part of an attention layer ({name}: {', '.join(missing)} "
                            "missing); use a complete checkpoint.")
        out[name] = torch.cat([parts[q] for q in _QKV], 0)
    if strict and unknown:
        raise PeruError(f"The HF CLIP checkpoint has {len(unknown)} tensor(s) this converter does not know, e.g. "
                        f"{unknown[0]!r}; it may not be a CLIP model (pass strict=False to drop them).")
    return out


def open_clip_to_hf(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Inverse of :func:`hf_to_open_clip`: open_clip names to ``CLIPModel`` names (``vision_model.*``, ...)."""
    inv_layer = {v: k for k, v in _LAYER.items()}
    inv_vision = {v: k for k, v in _VISION.items()}
    inv_text = {v: k for k, v in _TEXT.items()}
    blk = re.compile(r"^(?P<root>visual\.transformer|transformer)\.resblocks\.(?P<i>\d+)\.(?P<rest>.+)[._](?P<p>weight|bias)$")
    out: StateDict = {}
    for k, v in _strip_wrappers(state_dict).items():
        if k == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
        elif k == "logit_scale":
            out[k] = v
        elif m := blk.match(k):
            layer = f"{'vision' if m['root'] == 'visual.transformer' else 'text'}_model.encoder.layers.{m['i']}"
            if m["rest"] == "attn.in_proj":
                for name, part in zip(_QKV, v.chunk(3, 0)):
                    out[f"{layer}.self_attn.{name}.{m['p']}"] = part.contiguous()
            elif m["rest"] in inv_layer:
                out[f"{layer}.{inv_layer[m['rest']]}.{m['p']}"] = v
            else:
                raise PeruError(f"open_clip tensor {k!r} has no Hugging Face CLIP counterpart.")
        elif k.startswith("visual.") and k[len("visual."):] in inv_vision:
            out["vision_model." + inv_vision[k[len("visual."):]]] = v
        elif k in inv_text:
            out["text_model." + inv_text[k]] = v
        else:
            raise PeruError(f"open_clip tensor {k!r} has no Hugging Face CLIP counterpart (only ViT CLIP maps).")
    return out


def to_open_clip(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Any supported layout to open_clip names: HF CLIP is mapped, open_clip passes with wrappers stripped."""
    sd = _strip_wrappers(state_dict)
    return hf_to_open_clip(sd) if detect_layout(sd) == HF_CLIP else sd


class LoraTarget(NamedTuple):
    """Where an HF-named LoRA module lands in open_clip: ``key`` (a ``...weight``) and, for q/k/v, the row block."""

    key: str
    rows: Optional[slice]


def hf_lora_target(module: str, out_features: int) -> Optional[LoraTarget]:
    """The open_clip weight an HF-named adapter module (e.g. ``vision_model.encoder.layers.3.self_attn.q_proj``)
    changes; ``q/k/v_proj`` give the row block ``[i*d, (i+1)*d)`` of ``in_proj_weight`` (d = ``out_features``).
    ``None`` when ``module`` is not an HF CLIP name (e.g. already open_clip)."""
    m = _HF_LAYER_IN.search(module + ".weight")
    if m is None:
        if module.endswith("visual_projection"):
            raise PeruError("A LoRA on visual_projection cannot map onto open_clip's visual.proj; "
                            "retrain the adapter without that target.")
        return None
    root = "transformer" if m["tower"] == "text" else "visual.transformer"  # bare encoder: a vision tower
    block, rest = f"{root}.resblocks.{m['i']}", m["rest"]
    if rest.startswith("self_attn.") and rest[len("self_attn."):] in _QKV:
        i = _QKV.index(rest[len("self_attn."):])
        return LoraTarget(f"{block}.attn.in_proj_weight", slice(i * out_features, (i + 1) * out_features))
    if rest in _LAYER:
        return LoraTarget(f"{block}.{_LAYER[rest]}.weight", None)
    return None


def map_lora_factors(factors: Mapping[str, tuple]) -> dict[str, tuple]:
    """HF-named LoRA factors to open_clip weight keys; other names pass through unchanged.

    ``factors`` maps a module (``...self_attn.q_proj``, optionally with ``.weight``) to ``(A r x in, B out x r)``
    or ``(A, B, scale)``. q/k/v adapters of one layer become ONE exact factorisation of the packed
    ``in_proj_weight`` delta: ``A = [A_q; A_v]`` and ``B`` holding ``scale_q B_q`` and ``scale_v B_v`` at the q
    and v row blocks (scale 1.0 after folding), so ``B @ A == [s_q B_q A_q; 0; s_v B_v A_v]`` (rank r_q + r_v).
    """
    out: dict[str, tuple] = {}
    packed: dict[str, list[tuple[slice, torch.Tensor, torch.Tensor]]] = {}
    with_scale = False
    for name, f in factors.items():
        a, b = f[0], f[1]
        scale = float(f[2]) if len(f) > 2 else 1.0
        with_scale |= len(f) > 2
        target = hf_lora_target(name.removesuffix(".weight"), int(b.shape[0]))
        if target is None:
            out[name] = tuple(f)
        elif target.rows is None:
            out[target.key] = tuple(f)
        else:
            packed.setdefault(target.key, []).append((target.rows, a, b * scale if scale != 1.0 else b))
    for key, parts in packed.items():
        d = int(parts[0][2].shape[0])
        a_cat = torch.cat([a for _, a, _ in parts], 0)
        b_cat = torch.zeros(3 * d, a_cat.shape[0], dtype=parts[0][2].dtype)
        col = 0
        for rows, a, b in parts:
            b_cat[rows, col:col + a.shape[0]] = b
            col += a.shape[0]
        out[key] = (a_cat, b_cat, 1.0) if with_scale else (a_cat, b_cat)
    return out


def is_hf_module(name: str) -> bool:
    """True for an HF CLIP encoder-layer module or weight name (``...encoder.layers.3.self_attn.q_proj``)."""
    return _HF_LAYER_IN.search(name.removesuffix(".weight") + ".weight") is not None


def suggest_architecture(hf_config: Mapping[str, Any]) -> Optional[str]:
    """The open_clip model name matching an HF ``config.json`` (CLIPConfig or CLIPVisionConfig), or ``None``.

    OpenAI CLIP uses QuickGELU: ``hidden_act == "quick_gelu"`` maps to ``ViT-*-quickgelu``.
    """
    vc = hf_config.get("vision_config", hf_config)
    known = {(768, 12, 32): "ViT-B-32", (768, 12, 16): "ViT-B-16", (1024, 24, 14): "ViT-L-14",
             (1280, 32, 14): "ViT-H-14"}
    name = known.get((vc.get("hidden_size", 768), vc.get("num_hidden_layers", 12), vc.get("patch_size", 32)))
    if name is None:
        return None
    if vc.get("image_size", 224) == 336 and name == "ViT-L-14":
        name = "ViT-L-14-336"
    return name + ("-quickgelu" if vc.get("hidden_act", "quick_gelu") == "quick_gelu" else "")
