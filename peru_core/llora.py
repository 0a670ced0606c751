"""FusionBench L-LoRA exports, folded into ordinary LoRA factors so merges and PERU-LoRA apply unchanged.

L-LoRA (Tang et al., "Parameter Efficient Multi-task Model Fusion with Partial Linearization",
https://arxiv.org/abs/2310.04742; PERU compares with it, https://arxiv.org/abs/2310.01886) wraps every LoRA layer in a
first-order Taylor expansion around its initial parameters: ``f_lin(x) = f(x; p_0) + J_p f(x; p_0) (p - p_0)``.
FusionBench saves such an adapter as ``adapter_config.json`` + ``linearized_adapter_model.safetensors`` with keys
``<module>.model.lora_{A,B}.default.weight`` (the trained A, B) and ``<module>.params0_values.<i>`` (the layer's
initial parameters, in ``named_parameters`` order: the base layer's weight and bias, then A_0 and B_0; exports keep
only the last two).

For a linear layer ``y = W_0 x + b + s B A x`` the expansion in (A, B) is exact and linear in x:
``W_0 + s (B_0 A_0 + (B - B_0) A_0 + B_0 (A - A_0)) = W_0 + s [B, B_0] [A_0; A - A_0]``, i.e. LoRA factors of rank
2r with the same scale s. When B_0 is zero (PEFT's default initialisation) the update is ``s B A_0``: rank r.
"""
from __future__ import annotations

import math
import re
from typing import Any, Collection, Mapping

import torch

from peru_core.errors import PeruError
from peru_core.io import LINEARIZED_WEIGHTS, _pattern_value  # noqa: F401 - the file name is re-exported

_LORA = re.compile(r"^(?P<module>.+)\.model\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_PARAMS0 = re.compile(r"^(?P<module>.+)\.params0_values\.(?P<i>\d+)$")


def is_linearized(keys: Collection[str]) -> bool:
    """True for the tensor names of a FusionBench L-LoRA export (``...params0_values.<i>``)."""
    return any(_PARAMS0.match(k) for k in keys)


def _scale(config: Mapping[str, Any], module: str, r: int) -> float:
    peft_module = module.removeprefix("base_model.model.")
    alpha = float(_pattern_value(dict(config.get("alpha_pattern") or {}), peft_module,
                                 float(config.get("lora_alpha", r))))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def fold_linearized(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *,
                    name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An equivalent plain PEFT adapter ``(config, tensors)``: per layer ``A' = [A_0; A - A_0]`` and
    ``B' = s [B, B_0]`` (``A' = A_0``, ``B' = s B`` when B_0 is zero), with a per-module rank pattern and scale 1."""
    if config.get("use_dora"):
        raise PeruError(f"Adapter {name} is a linearized DoRA adapter; only linearized LoRA (L-LoRA) is supported.")
    if config.get("fan_in_fan_out"):
        raise PeruError(f"Adapter {name} is a linearized fan_in_fan_out adapter, which FusionBench does not write; "
                        "export it again on nn.Linear layers.")
    lora: dict[str, dict[str, torch.Tensor]] = {}
    params0: dict[str, dict[int, torch.Tensor]] = {}
    for key, t in tensors.items():
        if m := _LORA.match(key):
            lora.setdefault(m["module"], {})[m["ab"]] = t
        elif m := _PARAMS0.match(key):
            params0.setdefault(m["module"], {})[int(m["i"])] = t
        else:
            raise PeruError(f"Adapter {name} holds {key!r}, which is neither a linearized LoRA matrix nor an initial "
                            "value (params0_values); export the L-LoRA adapter again with FusionBench.")
    if not lora:
        raise PeruError(f"Adapter {name} holds no linearized LoRA matrices; export it again with FusionBench.")
    out: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise PeruError(f"Adapter {name} has only lora_{next(iter(ab))} for {module!r}; the export is incomplete, "
                            "so export it again.")
        A, B = ab["A"].float(), ab["B"].float()
        init = params0.get(module, {})
        if len(init) < 2:
            raise PeruError(f"Adapter {name} lacks the initial values A_0, B_0 (params0_values) of {module!r}; an "
                            "L-LoRA layer cannot be evaluated without them, so export it again with FusionBench.")
        i_a, i_b = sorted(init)[-2:]  # A_0 and B_0 are the layer's last two parameters
        A0, B0 = init[i_a].float(), init[i_b].float()
        if A0.shape != A.shape or B0.shape != B.shape:
            raise PeruError(f"Adapter {name}: params0_values.{i_a}/{i_b} of {module!r} have shapes "
                            f"{tuple(A0.shape)}, {tuple(B0.shape)} but A, B have {tuple(A.shape)}, {tuple(B.shape)}; "
                            "the export does not hold A_0 and B_0 there.")
        s = _scale(config, module, int(A.shape[0]))
        if not bool(B0.any()):  # B_0 = 0: only A_0 multiplies, and A's own value drops out
            A_new, B_new = A0, s * B
        else:
            A_new, B_new = torch.cat([A0, A - A0], 0), s * torch.cat([B, B0], 1)
        out[f"{module}.lora_A.weight"] = A_new.contiguous()
        out[f"{module}.lora_B.weight"] = B_new.contiguous()
        ranks[re.escape(module.removeprefix("base_model.model."))] = int(A_new.shape[0])  # PEFT reads regexes
    cfg = {k: v for k, v in config.items() if k not in ("rank_pattern", "alpha_pattern", "use_rslora")}
    # the scale is folded into B'; exact module names, so PEFT's suffix matching picks each layer's own rank
    cfg.update(r=next(iter(ranks.values())), lora_alpha=next(iter(ranks.values())), rank_pattern=dict(ranks),
               alpha_pattern=dict(ranks), linearized=True)
    return cfg, out
