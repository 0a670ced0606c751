"""FusionBench L-LoRA exports (linearized_adapter_model.safetensors) fold into LoRA factors that compute exactly what
the linearized layers compute: checked against a torch.func.jvp forward of each linearized layer."""
import json

import pytest
import torch

from hub_zoo import CONFIG, llora_export, llora_model, vision_tower
from peru_core.errors import PeruError
from peru_core.io import load_lora_adapter
from peru_core.llora import fold_linearized

transformers = pytest.importorskip("transformers")


def _open_clip_shapes() -> dict:
    from peru_core.zoo.validate import architecture_shapes

    return architecture_shapes("peru-hub-tiny", CONFIG)


@pytest.mark.parametrize("b0_zero", [True, False])
def test_folded_factors_equal_the_jvp_of_each_linearized_layer(tmp_path, b0_zero):
    from hub_zoo import Linearized

    torch.manual_seed(0)
    vision = vision_tower()
    model, cfg = llora_model(vision, b0_zero=b0_zero, seed=3)
    folder = llora_export(model, cfg, tmp_path / "llora")
    assert not (folder / "adapter_model.safetensors").exists()
    adapter = load_lora_adapter(folder, base_keys=_open_clip_shapes())
    d = 32  # width: q, k, v are row blocks of open_clip's in_proj_weight
    where = {"self_attn.q_proj": ("attn.in_proj_weight", slice(0, d)),
             "self_attn.v_proj": ("attn.in_proj_weight", slice(2 * d, 3 * d)),
             "mlp.fc1": ("mlp.c_fc.weight", slice(None))}
    checked = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linearized):
            continue
        suffix = next(s for s in where if name.endswith(s))
        base = module.model.base_layer
        eye = torch.eye(base.in_features)
        with torch.no_grad():
            linearized = module(eye) - base(eye)  # row i: the update applied to e_i, i.e. column i of delta
        key, rows = where[suffix]
        got = adapter[f"visual.transformer.resblocks.0.{key}"].delta()[rows]
        torch.testing.assert_close(got, linearized.T, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked == 3
    r = 2 if b0_zero else 4  # the folded rank: r when B_0 is PEFT's zeros, 2r otherwise
    assert adapter["visual.transformer.resblocks.0.mlp.c_fc.weight"].rank == r
    assert adapter["visual.transformer.resblocks.0.attn.in_proj_weight"].rank == 2 * r  # q and v, packed


def test_broken_exports_are_one_sentence():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 5, generator=g), torch.randn(3, 2, generator=g)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    key = "base_model.model.encoder.layers.0.mlp.fc1"
    with pytest.raises(PeruError, match="lacks the initial values A_0, B_0"):
        fold_linearized(cfg, {f"{key}.model.lora_A.default.weight": A, f"{key}.model.lora_B.default.weight": B,
                              "base_model.model.other.params0_values.2": A}, name="x")
    with pytest.raises(PeruError, match="does not hold A_0 and B_0"):
        fold_linearized(cfg, {f"{key}.model.lora_A.default.weight": A, f"{key}.model.lora_B.default.weight": B,
                              f"{key}.params0_values.2": B, f"{key}.params0_values.3": A}, name="x")
    with pytest.raises(PeruError, match="neither a linearized LoRA matrix"):
        fold_linearized(cfg, {f"{key}.params0_values.2": A, "something.else": A}, name="x")
    folded_cfg, folded = fold_linearized(cfg, {f"{key}.model.lora_A.default.weight": A,
                                               f"{key}.model.lora_B.default.weight": B,
                                               f"{key}.params0_values.2": A + 1, f"{key}.params0_values.3": B},
                                         name="x")
    assert folded[f"{key}.lora_A.weight"].shape == (4, 5) and folded_cfg["linearized"] is True
    json.dumps(folded_cfg)  # still a valid adapter_config
