"""Zoo loading: the runtime on a tiny real zoo, manifest validation errors, and the shipped demo zoo."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from peru_core.data import read_npz
from peru_core.errors import PeruError
from peru_core.evaluate import accuracy_of
from peru_core.zoo.manifest import DEMO_ZOO, load_zoo
from peru_core.zoo.runtime import ZooRuntime


@pytest.fixture(scope="module")
def runtime(tiny_zoo_dir):
    return ZooRuntime(load_zoo(tiny_zoo_dir), device="cpu")


def test_runtime_loads_base_finetunes_adapters_and_data(runtime, tiny_zoo_dir):
    base = runtime.base_state()
    assert base and all(k.startswith("visual.") for k in base)
    full = load_file(str(tiny_zoo_dir / "base.safetensors"))
    assert all(torch.equal(base[k], full[k]) for k in base)
    ft = runtime.finetuned("stripes")
    assert set(ft) == set(base) and not torch.equal(ft["visual.conv1.weight"], base["visual.conv1.weight"])
    assert set(runtime.finetuned(1)) == set(base)  # by index too
    adapter = runtime.adapter("blobs")
    assert all(k in base for k in adapter) and len(adapter) > 0
    x, y = runtime.data("stripes")
    assert x.shape == (24, 3, 8, 8) and y.dtype == torch.int64
    assert runtime.head("blobs").shape == (3, 16)


def test_accuracy_equals_the_manual_computation(runtime):
    ft = runtime.finetuned("blobs")
    x, y = runtime.data("blobs")
    head = runtime.head("blobs")
    model = runtime.load(ft)
    with torch.no_grad():
        ref = accuracy_of((torch.nn.functional.normalize(model.encode_image(x), dim=-1) @ head.T).argmax(-1), y)
    assert runtime.accuracy(ft, "blobs") == pytest.approx(ref)
    assert 0.0 <= runtime.accuracy(runtime.base_state(), "blobs") <= 1.0
    # a partial state dict means "the base elsewhere": loading {} evaluates the base model
    assert runtime.accuracy({}, "blobs") == runtime.accuracy(runtime.base_state(), "blobs")
    feats, labels = runtime.features(ft, "blobs", limit=5)
    assert feats.shape == (5, 16) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert labels.tolist() == y[:5].tolist()
    every, _ = runtime.features(ft, "blobs")
    some, some_labels = runtime.features(ft, "blobs", index=[20, 3, 7])  # only these images are encoded
    assert np.allclose(some, every[[20, 3, 7]], atol=1e-5) and some_labels.tolist() == y[[20, 3, 7]].tolist()
    assert runtime.predictions(ft, "blobs").shape == (24,)


def test_unknown_task_and_bad_state_dict_are_clear_errors(runtime):
    with pytest.raises(PeruError, match="not in zoo"):
        runtime.spec("nope")
    with pytest.raises(PeruError, match="out of range"):
        runtime.spec(7)
    with pytest.raises(PeruError, match="not a tuned parameter"):
        runtime.accuracy({"text_projection": torch.zeros(1)}, 0)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(root: Path, fn) -> None:
    raw = json.loads((root / "zoo.json").read_text())
    fn(raw)
    (root / "zoo.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["tasks"][0].update(finetuned="missing.safetensors"), "does not exist"),
    (lambda r: r["tasks"].append(dict(r["tasks"][0])), "twice"),
    (lambda r: [r["tasks"][0].pop(k) for k in ("finetuned", "lora", "llora")], "none of"),
    (lambda r: r["tasks"][0].update(test={"kind": "zip", "path": "x"}), "unknown"),
    (lambda r: r["tasks"][0].update(classes=["only"]), "two non-empty"),
    (lambda r: r.pop("architecture"), "architecture"),
    (lambda r: r.update(tasks=[]), "no tasks"),
])
def test_manifest_validation_names_the_problem(tiny_zoo_dir, tmp_path, edit, message):
    root = _copy(tiny_zoo_dir, tmp_path / "zoo")
    _edit(root, edit)
    with pytest.raises(PeruError, match=message):
        load_zoo(root)


def test_checkpoints_that_do_not_fit_the_zoo_are_rejected(tiny_zoo_dir, tmp_path):
    root = _copy(tiny_zoo_dir, tmp_path / "zoo")
    ft = load_file(str(root / "finetuned" / "stripes.safetensors"))
    save_file({**ft, "logit_scale": torch.zeros(())}, str(root / "finetuned" / "stripes.safetensors"))
    rt = ZooRuntime(load_zoo(root), "cpu")
    with pytest.raises(PeruError, match="outside the tuned part"):
        rt.finetuned("stripes")
    (root / "base.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(PeruError):
        ZooRuntime(load_zoo(root), "cpu")
    with pytest.raises(PeruError, match="no zoo.json"):
        load_zoo(tmp_path)


# --- the shipped demo zoo ----------------------------------------------------------------------------------
needs_demo = pytest.mark.skipif(not (DEMO_ZOO / "zoo.json").is_file(), reason="assets/zoo is not built yet")


@needs_demo
def test_demo_zoo_manifest_files_and_size():
    zoo = load_zoo(DEMO_ZOO)
    assert len(zoo.tasks) >= 6 and zoo.tuned_prefix == "visual."
    assert sum(p.stat().st_size for p in DEMO_ZOO.rglob("*") if p.is_file()) <= 100 * 2 ** 20  # issue 13's limit
    for t in zoo.tasks:
        assert t.finetuned and t.lora and t.llora and t.test and t.validation and t.license and t.source
        for kind in (t.lora, t.llora):
            assert (kind / "adapter_model.safetensors").is_file()
        keys = load_file(str(t.finetuned)).keys()
        assert keys and all(k.startswith("visual.") for k in keys)
        cfg = json.loads((t.lora / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] >= 16 and (t.lora / "adapter_model.safetensors").is_file()
        x, y = read_npz(t.test.path)
        assert x.dtype == np.uint8 and y.dtype == np.int64 and len(x) >= 200
        assert set(np.unique(y)) == set(range(len(t.classes)))


@needs_demo
@pytest.mark.slow
def test_demo_zoo_finetuned_beats_pretrained():
    rt = ZooRuntime(load_zoo(DEMO_ZOO), "cpu")
    task = rt.zoo.task_names[0]
    assert rt.accuracy(rt.finetuned(task), task) > rt.accuracy(rt.base_state(), task) + 0.1


# --- build pieces that need no data package -----------------------------------------------------------------
def test_synthetic_tasks_are_deterministic_balanced_and_labelled():
    from peru_core.zoo import synthetic

    for make in (synthetic.shapes, synthetic.counting, synthetic.textures):
        a, b = make(60, 3), make(60, 3)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and a.synthetic
        assert a.x.shape == (60, 28, 28) and a.x.dtype == np.uint8
        assert np.bincount(a.y).tolist() == [10] * 6 and len(a.classes) == 6
        assert not np.array_equal(make(60, 4).x, a.x)
    dots = synthetic.counting(12, 0)
    from scipy import ndimage  # connected bright blobs = the count the label names

    for img, label in zip(dots.x, dots.y):
        assert ndimage.label(img > (int(img.max()) + np.median(img)) / 2)[1] == label + 1


def test_split_is_disjoint_and_seen_classes_follow_the_shared_key():
    from peru_core.zoo.build import BuildConfig, concepts, split
    from peru_core.zoo.sources import RawTask

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (400, 28, 28), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(400) % 256, np.arange(400) // 256  # unique images
    y = np.arange(400) % 10
    mk = lambda name: RawTask(name, name, [str(i) for i in range(10)], ["{}"], x, y, "", "", seen_key="digits")
    cfg = BuildConfig(test_size=100, val_size=50, seen_fraction=0.6)  # the v1 share (v2 sees every class)
    a, b = split(mk("a"), cfg), split(mk("b"), cfg)
    assert (len(a.train[1]), len(a.val[1]), len(a.test[1])) == (250, 50, 100)
    ids = lambda xs: {bytes(i[0, :2]) for i in xs}
    assert not (ids(a.train[0]) & ids(a.test[0])) and not (ids(a.val[0]) & ids(a.test[0]))
    assert a.seen == b.seen and len(a.seen) == 6  # same key, same seen classes; round(0.6 * 10)
    concept_ids, captions = concepts([a, b])
    assert len(captions) == 10  # the two tasks' digits are one concept each


def test_finetunes_write_visual_tensors_and_a_peft_adapter(tmp_path):
    from peru_core.io import load_lora_adapter
    from peru_core.models import create_clip
    from peru_core.zoo.finetune import FinetuneConfig, LoraConfigSpec, finetune_full, finetune_lora
    from tiny_zoo import ARCH, TINY_CONFIG

    torch.manual_seed(0)
    model = create_clip(ARCH, TINY_CONFIG)
    head = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1) * 10
    x = np.random.default_rng(0).integers(0, 255, (32, 8, 8), dtype=np.uint8)
    y = np.arange(32) % 2
    cfg = FinetuneConfig(steps=3, batch=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune_full(model, head, x, y, 8, (0.5,) * 3, (0.25,) * 3, cfg)
    assert set(tuned) == {k for k in before if k.startswith("visual.")}
    assert not torch.equal(tuned["visual.conv1.weight"], before["visual.conv1.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the base stays untouched
    finetune_lora(model, head, x, y, 8, (0.5,) * 3, (0.25,) * 3, cfg, LoraConfigSpec(rank=4, alpha=4), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    adapter = load_lora_adapter(tmp_path, base_keys=before)
    assert set(adapter) == {f"visual.transformer.resblocks.0.mlp.{m}.weight" for m in ("c_fc", "c_proj")}
    assert all(f.rank == 4 and f.B.abs().sum() > 0 for f in adapter.values())  # trained: B left zero
    # L-LoRA: same seed, so the same A_0; A stays frozen at it, only B trains
    finetune_lora(model, head, x, y, 8, (0.5,) * 3, (0.25,) * 3, cfg, LoraConfigSpec(rank=4, alpha=4), tmp_path / "l",
                  linearized=True)
    lin = load_lora_adapter(tmp_path / "l", base_keys=before)
    from peft import LoraConfig, get_peft_model

    from peru_core.zoo.finetune import lora_targets

    torch.manual_seed(cfg.seed)  # A_0 as finetune_lora draws it
    init = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=4, target_modules=lora_targets(model)))
    a0 = {n: p for n, p in init.named_parameters() if "lora_A" in n}
    assert len(a0) == len(lin) == 2 and all(f.B.abs().sum() > 0 for f in lin.values())
    for k, f in lin.items():
        init_a = next(p for n, p in a0.items() if k.removesuffix(".weight") + ".lora_A" in n)
        assert torch.equal(f.A, init_a) and not torch.equal(adapter[k].A, init_a)  # LoRA moved A, L-LoRA did not
