"""HF CLIP <-> open_clip: key round trips and identical outputs on the same random weights (tiny configs).

transformers is a test fixture only: peru_core.hf_clip never imports it.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from open_clip.transformer import QuickGELU, VisionTransformer  # noqa: E402

from peru_core import hf_clip  # noqa: E402
from peru_core.errors import PeruError  # noqa: E402

W, LAYERS, HEADS, IMG, PATCH, PROJ, MLP = 32, 2, 4, 16, 4, 24, 64
VOCAB, CTX = 50, 8


def hf_vision_config(act: str = "quick_gelu") -> "transformers.CLIPVisionConfig":
    return transformers.CLIPVisionConfig(hidden_size=W, intermediate_size=MLP, num_hidden_layers=LAYERS,
                                         num_attention_heads=HEADS, image_size=IMG, patch_size=PATCH,
                                         projection_dim=PROJ, hidden_act=act)


def oc_vision(act: str, output_dim: int = PROJ) -> VisionTransformer:
    return VisionTransformer(image_size=IMG, patch_size=PATCH, width=W, layers=LAYERS, heads=HEADS,
                             mlp_ratio=MLP / W, output_dim=output_dim,
                             act_layer=QuickGELU if act == "quick_gelu" else torch.nn.GELU).eval()


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random (LayerNorms too), so a swapped or transposed tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # LayerNorm gains near 1
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture(params=["quick_gelu", "gelu"])
def hf_vision(request):
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(hf_vision_config(request.param)).eval()
    randomize(model)
    return request.param, model


def test_keys_round_trip_exactly(hf_vision):
    _, model = hf_vision
    sd = model.state_dict()
    oc = hf_clip.hf_to_open_clip(sd)
    assert hf_clip.detect_layout(sd) == hf_clip.HF_CLIP and hf_clip.detect_layout(oc) == hf_clip.OPEN_CLIP
    assert oc["visual.transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * W, W)
    back = hf_clip.open_clip_to_hf(oc)
    expected = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    assert set(back) == set(expected)
    for k, v in expected.items():
        assert torch.equal(back[k], v), k


def test_open_clip_keys_match_a_real_vision_tower(hf_vision):
    act, model = hf_vision
    oc = hf_clip.hf_to_open_clip(model.state_dict())
    tower = {f"visual.{k}": v for k, v in oc_vision(act).state_dict().items()}
    assert set(oc) == set(tower)
    assert all(oc[k].shape == tower[k].shape for k in tower)


@pytest.mark.parametrize("with_projection", [True, False])
def test_identical_image_tower_outputs(hf_vision, with_projection):
    act, model = hf_vision
    sd = model.state_dict()
    if not with_projection:  # a plain CLIPVisionModel: pooled output, no visual.proj
        sd = {k: v for k, v in sd.items() if k != "visual_projection.weight"}
    oc = hf_clip.hf_to_open_clip(sd)
    tower = oc_vision(act)
    if not with_projection:
        tower.proj = None
    tower.load_state_dict({k[len("visual."):]: v for k, v in oc.items()}, strict=True)
    x = torch.randn(3, 3, IMG, IMG)
    with torch.no_grad():
        ref = model(pixel_values=x)
        expected = ref.image_embeds if with_projection else model.vision_model(pixel_values=x).pooler_output
        got = tower(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_whole_clip_model_text_and_image_features_match():
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(hidden_size=W, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         vocab_size=VOCAB, max_position_embeddings=CTX, bos_token_id=VOCAB - 2,
                         eos_token_id=VOCAB - 1, pad_token_id=0),
        vision_config=hf_vision_config().to_dict(), projection_dim=PROJ)).eval()
    randomize(hf)
    oc = CLIP(PROJ, CLIPVisionCfg(layers=LAYERS, width=W, head_width=W // HEADS, mlp_ratio=MLP / W, patch_size=PATCH,
                                  image_size=IMG),
              CLIPTextCfg(context_length=CTX, vocab_size=VOCAB, width=W, heads=HEADS, layers=LAYERS,
                          mlp_ratio=MLP / W), quick_gelu=True).eval()
    mapped = hf_clip.to_open_clip(hf.state_dict())
    oc.load_state_dict(mapped, strict=True)
    # open_clip pools at argmax(token id), HF at the first EOS: make EOS the largest id, then pad with 0.
    ids = torch.tensor([[VOCAB - 2, 5, 7, VOCAB - 1, 0, 0, 0, 0], [VOCAB - 2, 3, 4, 9, 11, 12, VOCAB - 1, 0]])
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        text = hf.text_projection(hf.text_model(input_ids=ids).pooler_output)
        image = hf.visual_projection(hf.vision_model(pixel_values=x).pooler_output)
        torch.testing.assert_close(oc.encode_text(ids), text, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(oc.encode_image(x), image, atol=1e-5, rtol=1e-5)
    back = hf_clip.open_clip_to_hf(mapped)
    assert all(torch.equal(back[k], v) for k, v in hf.state_dict().items() if not k.endswith("position_ids"))


def test_wrapped_and_bare_prefixes_are_normalised(hf_vision):
    _, model = hf_vision
    plain = hf_clip.hf_to_open_clip(model.state_dict())
    wrapped = {"module.model." + k: v for k, v in model.state_dict().items()}
    assert set(hf_clip.to_open_clip(wrapped)) == set(plain)
    bare = model.vision_model.state_dict()  # a CLIPVisionTransformer saved on its own
    assert set(hf_clip.to_open_clip(bare)) == set(plain) - {"visual.proj"}
    oc_wrapped = {"model." + k: v for k, v in plain.items()}
    assert set(hf_clip.to_open_clip(oc_wrapped)) == set(plain)


def test_unknown_and_incomplete_hf_checkpoints_are_refused(hf_vision):
    _, model = hf_vision
    sd = dict(model.state_dict())
    with pytest.raises(PeruError, match="does not know"):
        hf_clip.hf_to_open_clip({**sd, "classifier.weight": torch.zeros(3, W)})
    assert "visual.proj" in hf_clip.hf_to_open_clip({**sd, "classifier.weight": torch.zeros(3, W)}, strict=False)
    del sd["vision_model.encoder.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(PeruError, match="k_proj"):
        hf_clip.hf_to_open_clip(sd)


def test_lora_targets_and_packed_factors_equal_the_merged_peft_model():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(hf_vision_config()).eval()
    randomize(hf)
    base = {k: v.clone() for k, v in hf_clip.hf_to_open_clip(hf.state_dict()).items()}  # merge works in place
    cfg = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj", "fc1"], lora_dropout=0.0)
    pm = peft.get_peft_model(hf, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape) * 0.3)  # lora_B starts at 0: make the delta non-trivial
    scale = 6 / 3
    sd = peft.get_peft_model_state_dict(pm)
    factors = {}
    for k, a in sd.items():
        if ".lora_A." in k:
            module = k.split(".lora_A.")[0]
            factors[module] = (a, scale * sd[k.replace(".lora_A.", ".lora_B.")])
    assert hf_clip.hf_lora_target("base_model.model.vision_model.encoder.layers.1.self_attn.v_proj", W) == \
        hf_clip.LoraTarget("visual.transformer.resblocks.1.attn.in_proj_weight", slice(2 * W, 3 * W))
    mapped = hf_clip.map_lora_factors(factors)
    assert set(mapped) == {f"visual.transformer.resblocks.{i}.{n}" for i in range(LAYERS)
                           for n in ("attn.in_proj_weight", "mlp.c_fc.weight")}
    a, b = mapped["visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert a.shape == (6, W) and b.shape == (3 * W, 6)
    assert torch.count_nonzero(b[W:2 * W]) == 0  # k rows untouched
    adapted = {k: v + mapped[k][1] @ mapped[k][0] if k in mapped else v for k, v in base.items()}
    merged = hf_clip.hf_to_open_clip(pm.merge_and_unload().state_dict())
    for k in base:
        torch.testing.assert_close(adapted[k], merged[k], atol=1e-5, rtol=1e-5)


def test_suggest_architecture_reads_the_activation():
    assert hf_clip.suggest_architecture({"vision_config": {"hidden_size": 768, "num_hidden_layers": 12,
                                                           "patch_size": 32, "hidden_act": "quick_gelu"}}) \
        == "ViT-B-32-quickgelu"
    assert hf_clip.suggest_architecture({"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14,
                                         "hidden_act": "gelu"}) == "ViT-L-14"
    assert hf_clip.suggest_architecture({"hidden_size": 33}) is None


def test_runtime_module_does_not_import_transformers():
    code = "import sys, peru_core.hf_clip; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_peft_adapter_folder_through_the_engine_loader(tmp_path):
    """save_pretrained -> io.load_lora_adapter (PEFT semantics; HF names mapped by hf_clip.map_lora_factors) ->
    open_clip weights equal to PEFT's own merge_and_unload, mapped."""
    peft = pytest.importorskip("peft")
    from peru_core.io import load_lora_adapter

    torch.manual_seed(1)
    hf = transformers.CLIPVisionModel(hf_vision_config()).eval()
    randomize(hf)
    base = {k: v.clone() for k, v in hf_clip.hf_to_open_clip(hf.state_dict()).items()}  # merge works in place
    cfg = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "out_proj"], lora_dropout=0.0,
                          rank_pattern={"layers.1.self_attn.v_proj": 4}, use_rslora=True)
    pm = peft.get_peft_model(hf, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape) * 0.3)
    pm.save_pretrained(tmp_path / "adapter")
    mapped = load_lora_adapter(tmp_path / "adapter")  # io.parse_adapter maps HF module names with hf_clip
    assert mapped["visual.transformer.resblocks.1.attn.in_proj_weight"].rank == 2 + 4
    merged = hf_clip.hf_to_open_clip(pm.merge_and_unload().state_dict())
    for k, v in base.items():
        got = v + mapped[k].delta() if k in mapped else v
        torch.testing.assert_close(got, merged[k], atol=1e-5, rtol=1e-5)
    assert set(mapped) == {f"visual.transformer.resblocks.{i}.attn.{n}" for i in range(LAYERS)
                           for n in ("in_proj_weight", "out_proj.weight")}
