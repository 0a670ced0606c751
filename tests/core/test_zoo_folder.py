"""A zoo from a folder: write_zoo (import of open_clip, HF CLIP, PEFT and pickled checkpoints), deep validation
with one-sentence problems, and the ViT-B/32-size path on the CPU (slow)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from peru_core import hf_clip
from peru_core.errors import PeruError
from peru_core.io import load_lora_adapter
from peru_core.models import create_clip
from peru_core.zoo.validate import validate_zoo, zoo_problems
from peru_core.zoo.writer import TaskInput, write_zoo

ARCH = "peru-test-real-ckpt"
CONFIG = {"embed_dim": 16, "quick_gelu": True,
          "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 8},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}
CLASSES = ("red", "green", "blue")


def perturbed(sd, seed, prefix="visual."):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sd.items() if k.startswith(prefix)}


@pytest.fixture
def inputs(tmp_path):
    torch.manual_seed(0)
    base = create_clip(ARCH, CONFIG).state_dict()
    save_file(base, tmp_path / "base.safetensors")
    save_file(perturbed(base, 1), tmp_path / "ft_a.safetensors")
    folder = tmp_path / "images"
    for c, rgb in zip(CLASSES, [(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20 + i, 20), rgb).save(folder / c / f"{i}.png")
    return tmp_path, base


def hf_vision_model(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, image_size=16, patch_size=8)
    return transformers.CLIPVisionModel(cfg).eval()


def test_write_open_clip_zoo_and_evaluate(inputs):
    tmp, base = inputs
    zoo = write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors",
                    [{"name": "colours", "classes": "red\ngreen, blue", "finetuned": str(tmp / "ft_a.safetensors"),
                      "test": str(tmp / "images"), "source": "made in the test"}],
                    model_config=CONFIG, description="test zoo")
    raw = json.loads((tmp / "zoo" / "zoo.json").read_text())
    assert raw["base"] == "base.safetensors" and raw["tasks"][0]["finetuned"] == "checkpoints/colours.safetensors"
    assert raw["tasks"][0]["test"] == {"kind": "folder", "path": "data/colours_test"}  # copied: self-contained
    assert raw["tasks"][0]["source"] == "made in the test" and "notes" not in raw
    assert raw["tasks"][0]["classes"] == list(CLASSES)  # a form's text box: lines or commas
    assert zoo_problems(tmp / "zoo") == [] and validate_zoo(tmp / "zoo").task_names == ["colours"]
    from peru_core.zoo.runtime import ZooRuntime

    rt = ZooRuntime(zoo, device="cpu")
    acc = rt.accuracy(rt.finetuned("colours"), "colours")
    assert 0.0 <= acc <= 1.0 and rt.data("colours")[0].shape == (6, 3, 16, 16)


def test_hf_finetune_is_imported_with_projection_from_base(inputs):
    tmp, base = inputs
    hf = hf_vision_model()
    save_file({f"vision_model.{k}": v.contiguous() for k, v in hf.state_dict().items()}, tmp / "hf.safetensors")
    zoo = write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors",
                    [TaskInput("hf", CLASSES, finetuned=tmp / "hf.safetensors", test=tmp / "images")],
                    model_config=CONFIG)
    sd = load_file(zoo.tasks[0].finetuned)
    assert set(sd) == {k for k in base if k.startswith("visual.")}
    assert torch.equal(sd["visual.proj"], base["visual.proj"])  # CLIPVisionModel has no projection
    hsd = hf.state_dict()
    qkv = [hsd[f"encoder.layers.0.self_attn.{n}_proj.weight"] for n in "qkv"]
    assert torch.equal(sd["visual.transformer.resblocks.0.attn.in_proj_weight"], torch.cat(qkv))
    assert any("Hugging Face" in n for n in zoo.extra["notes"]) and any("visual.proj" in n for n in zoo.extra["notes"])


def test_hf_lora_q_v_adapter_lands_on_in_proj(inputs):
    peft = pytest.importorskip("peft")
    tmp, base = inputs
    hf = hf_vision_model()
    base_hf = {k: v.clone() for k, v in hf_clip.hf_to_open_clip(hf.state_dict()).items()}
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape) * 0.2)
    pm.save_pretrained(tmp / "hf_lora")
    zoo = write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors",
                    [TaskInput("lora", CLASSES, lora=tmp / "hf_lora", test=tmp / "images")], model_config=CONFIG)
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    adapter = load_lora_adapter(zoo.tasks[0].lora, base_keys=base.keys())
    assert set(adapter) == {key} and adapter[key].rank == 4
    merged = hf_clip.hf_to_open_clip(pm.merge_and_unload().state_dict())
    torch.testing.assert_close(base_hf[key] + adapter[key].delta(), merged[key], atol=1e-5, rtol=1e-5)
    assert any("Hugging Face modules" in n for n in zoo.extra["notes"])
    from peru_core.zoo.runtime import ZooRuntime

    assert set(ZooRuntime(zoo, device="cpu").adapter("lora")) == {key}  # the dashboard's path


def test_pickled_finetune_needs_explicit_conversion(inputs):
    tmp, base = inputs
    torch.save(perturbed(base, 2), tmp / "ft.pt")
    task = TaskInput("p", CLASSES, finetuned=tmp / "ft.pt")
    with pytest.raises(PeruError, match="pickled checkpoint"):
        write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors", [task], model_config=CONFIG)
    assert not (tmp / "zoo").exists() and not list(tmp.glob(".zoo.*"))  # nothing half-written, staging removed
    zoo = write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors", [task], model_config=CONFIG, convert_pickles=True)
    assert torch.equal(load_file(zoo.tasks[0].finetuned)["visual.proj"], perturbed(base, 2)["visual.proj"])


def write_manifest(tmp: Path, **task) -> Path:
    zoo = tmp / "zoo"
    zoo.mkdir(exist_ok=True)
    entry = {"name": "t", "classes": list(CLASSES), "finetuned": str(tmp / "ft_a.safetensors"), **task}
    (zoo / "zoo.json").write_text(json.dumps({"architecture": ARCH, "model_config": CONFIG,
                                              "base": str(tmp / "base.safetensors"), "tasks": [entry]}))
    return zoo


def test_validation_names_the_exact_problem(inputs):
    tmp, base = inputs
    assert zoo_problems(write_manifest(tmp, test={"kind": "folder", "path": str(tmp / "images")})) == []
    # missing file
    (p,) = zoo_problems(write_manifest(tmp, finetuned="nowhere.safetensors"))
    assert "names 'nowhere.safetensors', which does not exist" in p
    # class count not matching the folder
    (p,) = zoo_problems(write_manifest(tmp, classes=["red", "green"], test={"kind": "folder",
                                                                           "path": str(tmp / "images")}))
    assert "3 class sub-folders but the task lists 2 classes" in p
    # wrong architecture: a fine-tune of another patch size
    other = dict(CONFIG, vision_cfg=dict(CONFIG["vision_cfg"], patch_size=4))
    save_file(perturbed(create_clip("peru-test-real-ckpt-p4", other).state_dict(), 3), tmp / "p4.safetensors")
    (p,) = zoo_problems(write_manifest(tmp, finetuned=str(tmp / "p4.safetensors")))
    assert "'visual.conv1.weight' of shape (32, 3, 4, 4) where" in p and "(32, 3, 8, 8)" in p
    # a fine-tune holding the text tower too (outside the tuned part)
    save_file(base, tmp / "full.safetensors")
    (p,) = zoo_problems(write_manifest(tmp, finetuned=str(tmp / "full.safetensors")))
    assert "does not have" in p and "tuned_prefix" in p
    # an adapter targeting a layer the base lacks
    ad = tmp / "bad_adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    m = "base_model.model.visual.transformer.resblocks.5.mlp.c_fc"
    save_file({f"{m}.lora_A.weight": torch.zeros(2, 32), f"{m}.lora_B.weight": torch.zeros(128, 2)},
              ad / "adapter_model.safetensors")
    (p,) = zoo_problems(write_manifest(tmp, lora=str(ad)))
    assert "resblocks.5.mlp.c_fc.weight" in p and "not in the base model" in p
    # unknown architecture
    raw = json.loads((tmp / "zoo" / "zoo.json").read_text())
    raw.pop("model_config")
    raw["architecture"] = "ViT-Q-99"
    (tmp / "zoo" / "zoo.json").write_text(json.dumps(raw))
    (p,) = zoo_problems(tmp / "zoo")
    assert "Unknown architecture 'ViT-Q-99'" in p
    with pytest.raises(PeruError, match="ViT-Q-99"):
        validate_zoo(tmp / "zoo")


def test_writer_refuses_a_wrong_class_count_before_writing(inputs):
    tmp, _ = inputs
    with pytest.raises(PeruError, match="nope.safetensors does not exist"):
        write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors",
                  [TaskInput("t", CLASSES, finetuned=tmp / "nope.safetensors")], model_config=CONFIG)
    with pytest.raises(PeruError, match="test data of task 't' .*does not exist"):
        write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors",
                  [TaskInput("t", CLASSES, finetuned=tmp / "ft_a.safetensors", test=tmp / "nope")],
                  model_config=CONFIG)
    with pytest.raises(PeruError, match="3 class sub-folders but the task lists 4 classes"):
        write_zoo(tmp / "zoo", ARCH, tmp / "base.safetensors",
                  [TaskInput("t", CLASSES + ("pink",), finetuned=tmp / "ft_a.safetensors", test=tmp / "images")],
                  model_config=CONFIG)
    assert not (tmp / "zoo").exists()


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_vit_b32_size_zoo_on_cpu_with_a_handful_of_images(tmp_path):
    """The real-size path: ViT-B/32 random weights, 2 tasks, write_zoo, merge, PERU-FFT, evaluate 4 images."""
    bench = _bench()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a shared machine (2-thread pools spin against other jobs)
    try:
        rows = bench.run_scale("ViT-B-32", tasks=2, images=4, workdir=tmp_path, keeps=(5.0,), device="cpu")
    finally:
        torch.set_num_threads(threads)
    stages = {r["stage"] for r in rows}
    assert {"build zoo", "validate", "task arithmetic", "ties", "peru-fft sweep", "evaluate"} <= stages
    accs = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
    assert accs and all(0.0 <= a <= 1.0 for a in accs)
    assert validate_zoo(tmp_path / "zoo").architecture == "ViT-B-32"
