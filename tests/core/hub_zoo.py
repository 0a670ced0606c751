"""A fake Hugging Face hub for zoo tests: a random-weight ``CLIPModel`` base and ``CLIPVisionModel`` fine-tunes
(transformers' own layout and ``save_pretrained``), PEFT LoRA adapters on the bare ``CLIPVisionTransformer`` (as
FusionBench trains them), a FusionBench L-LoRA export and parquet test sets, all in a cache (``hub_cache``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch.func import functional_call, jvp

from hub_cache import add_repo, parquet_bytes, png_bytes

ARCH = "peru-hub-tiny"
# open_clip's config with the shapes of the HF config below (QuickGELU, as OpenAI CLIP)
CONFIG = {"embed_dim": 16, "quick_gelu": True,
          "vision_cfg": {"image_size": 8, "layers": 1, "width": 32, "patch_size": 4, "head_width": 16,
                         "mlp_ratio": 2.0},
          "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
BASE, DATA = "openai-test/clip-tiny", "tanganke-test"
MNIST = [str(i) for i in range(10)]
BLOBS = ["left", "right", "middle"]


def vision_config():
    import transformers

    return transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=8, patch_size=4, projection_dim=16)


def vision_tower() -> torch.nn.Module:
    """A bare ``CLIPVisionTransformer`` (module names ``embeddings.*``, ``encoder.layers.*``): FusionBench's LoRA
    target. transformers 5's ``CLIPVisionModel`` is that module itself; transformers 4's wraps it (``vision_model``)."""
    import transformers

    m = transformers.CLIPVisionModel(vision_config()).eval()
    return getattr(m, "vision_model", m)


def clip_model():
    import transformers

    text = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=49408,
                max_position_embeddings=12, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision_config().to_dict(),
                                                          projection_dim=16)).eval()


def saved(model, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file()
    return folder


class Linearized(torch.nn.Module):
    """FusionBench's LinearizedModelWraper, restated: the first-order Taylor expansion of ``model`` around its
    parameters at construction, computed with ``torch.func.jvp`` (its parameters are saved as ``params0_values``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        p0 = [(k, v.detach().clone()) for k, v in model.named_parameters()]
        self.params0_keys = [k for k, _ in p0]
        self.params0_values = torch.nn.ParameterList([torch.nn.Parameter(v, requires_grad=False) for _, v in p0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0 = tuple(self.params0_values)
        dp = tuple(p - q for p, q in zip((v for _, v in self.model.named_parameters()), p0))
        out, d = jvp(lambda *ps: functional_call(self.model, dict(zip(self.params0_keys, ps)), (x,)), p0, dp)
        return out + d


def llora_model(base_vision, *, b0_zero: bool, seed: int, targets=("q_proj", "v_proj", "fc1"), rank: int = 2):
    """A PEFT LoRA model on the bare vision transformer with every LoRA layer linearized (FusionBench's
    ``linearize_lora_model_``) and then "trained": A and B moved from (A_0, B_0)."""
    import copy

    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=3 * rank, target_modules=list(targets))
    model = get_peft_model(copy.deepcopy(base_vision), config)
    g = torch.Generator().manual_seed(seed + 1)
    layers = [(k, m) for k, m in model.named_modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for key, layer in layers:
            if not b0_zero:  # a B_0 other than PEFT's zeros: the general case of the fold (rank 2r)
                layer.lora_B["default"].weight.copy_(0.3 * torch.randn(layer.lora_B["default"].weight.shape,
                                                                       generator=g))
            parent = model.get_submodule(key.rsplit(".", 1)[0])
            setattr(parent, key.rsplit(".", 1)[1], Linearized(layer))
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval(), config


def llora_export(model, config, folder: Path) -> Path:
    """What FusionBench writes: adapter_config.json + linearized_adapter_model.safetensors with the trained A, B and
    the initial values A_0, B_0 (params0_values.2 and .3 of each wrapped LoRA layer)."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()
          if ".model.lora_" in k or k.endswith(("params0_values.2", "params0_values.3"))}
    (folder / "linearized_adapter_model.safetensors").write_bytes(save(sd))
    return folder


def _images(task: str, n: int, seed: int) -> tuple[list[bytes], list[int]]:
    rng = np.random.default_rng(seed)
    k = 10 if task == "mnist" else 3
    y = [int(v) for v in rng.integers(0, k, n)]
    imgs = []
    for c in y:
        x = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
        x[:, c % 8] = 250
        imgs.append(png_bytes(x))
    return imgs, y


def build_hub(cache: Path, work: Path) -> dict[str, str]:
    """Fill ``cache`` and return the hf:// references of everything in it."""
    from peft import LoraConfig, get_peft_model

    work.mkdir(parents=True, exist_ok=True)
    base = clip_model()
    add_repo(cache, BASE, {"": saved(base, work / "base")})
    refs = {"base": f"hf://{BASE}"}
    vision_sd = {k.removeprefix("vision_model."): v for k, v in base.vision_model.state_dict().items()}
    for j, task in enumerate(("mnist", "blobs")):
        g = torch.Generator().manual_seed(10 + j)
        ft = {f"vision_model.{k}": (v + 0.02 * torch.randn(v.shape, generator=g)).contiguous()
              for k, v in vision_sd.items()}
        # a CLIPVisionModel as transformers 4 saved FusionBench's fine-tunes: vision_model.* (no projection)
        add_repo(cache, f"{DATA}/clip-tiny_{task}", {"model.safetensors": save(ft),
                                                     "config.json": vision_config().to_json_string().encode()})
        refs[f"ft_{task}"] = f"hf://{DATA}/clip-tiny_{task}"
        vision = vision_tower()  # PEFT on the bare transformer
        vision.load_state_dict(vision_sd)
        lora = get_peft_model(vision, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
        lora.save_pretrained(str(work / f"lora_{task}"))
        add_repo(cache, f"{DATA}/clip-tiny_{task}_lora-2", {"": work / f"lora_{task}"})
        refs[f"lora_{task}"] = f"hf://{DATA}/clip-tiny_{task}_lora-2"
        vision = vision_tower()
        vision.load_state_dict(vision_sd)
        model, cfg = llora_model(vision, b0_zero=(j == 0), seed=20 + j)
        llora_export(model, cfg, work / f"llora_{task}")
        add_repo(cache, f"{DATA}/clip-tiny_{task}_l-lora", {"": work / f"llora_{task}"})
        refs[f"llora_{task}"] = f"hf://{DATA}/clip-tiny_{task}_l-lora"
    # test sets as the hub serves them: mnist with its split files at the root of a config folder, blobs under data/
    mnist_test, mnist_train = _images("mnist", 20, 1), _images("mnist", 6, 2)
    add_repo(cache, f"{DATA}/mnist", {"mnist/test-00000-of-00001.parquet": parquet_bytes(*mnist_test, MNIST),
                                      "mnist/train-00000-of-00001.parquet": parquet_bytes(*mnist_train, MNIST)},
             repo_type="dataset")
    refs["test_mnist"] = f"hf://datasets/{DATA}/mnist/mnist"
    add_repo(cache, f"{DATA}/blobs", {"data/test-00000-of-00001.parquet": parquet_bytes(*_images("blobs", 12, 3),
                                                                                       BLOBS)},
             repo_type="dataset")
    refs["test_blobs"] = f"hf://{DATA}/blobs"  # bare: a dataset, since it names test data
    # bad sets: no label column, and a class list that is not MNIST's
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(mnist_test[0], type=pa.binary()), "caption": ["x"] * 20}), buf)
    add_repo(cache, f"{DATA}/nolabel", {"test.parquet": buf.getvalue()}, repo_type="dataset")
    add_repo(cache, f"{DATA}/three", {"test.parquet": parquet_bytes(_images("blobs", 5, 4)[0], [0, 1, 2, 0, 1],
                                                                    BLOBS)}, repo_type="dataset")
    (work / "config.json").write_text(json.dumps(CONFIG))
    refs["config"] = str(work / "config.json")
    return refs
