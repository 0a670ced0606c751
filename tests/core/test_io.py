"""Checkpoint I/O: safetensors round trips, atomic writes, every bad input, PEFT adapters (PEFT semantics)."""
from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from conftest import LORA_TARGETS, PREFIX, finetune, random_factors, write_adapter
from peru_core.errors import PeruError
from peru_core.io import (atomic_dir, load_lora_adapter, load_metadata, load_state_dict, save_state_dict,
                          validate_adapter, validate_base, validate_finetuned, validate_task_names, validate_upload)


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


# ------------------------------------------------------------------------------------------------ safetensors
def test_round_trip_path_and_bytes(tmp_path, base):
    p = save_state_dict(base, tmp_path / "sub" / "b.safetensors", metadata={"who": "test"})
    for loaded in (load_state_dict(p), load_state_dict(p.read_bytes())):
        assert set(loaded) == set(base)
        assert all(torch.equal(loaded[k], base[k]) for k in base)
    assert load_metadata(p) == {"who": "test"}
    assert [q.name for q in p.parent.iterdir()] == ["b.safetensors"]  # no temp file left
    some = load_state_dict(p, keys=lambda k: k.startswith(PREFIX))  # only those tensors, in the file's order
    assert list(some) == [k for k in load_state_dict(p) if k.startswith(PREFIX)] and some


def test_save_views_of_one_buffer(tmp_path):
    flat = torch.arange(10.0)
    sd = {"a": flat[:4].view(2, 2), "b": flat[4:]}
    loaded = load_state_dict(save_state_dict(sd, tmp_path / "v.safetensors"))
    assert torch.equal(loaded["a"], sd["a"]) and torch.equal(loaded["b"], sd["b"])


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        save_state_dict({"a": torch.zeros(2), "b": "not a tensor"}, tmp_path / "x.safetensors")  # type: ignore
    assert list(tmp_path.iterdir()) == []


def test_pickle_file_refused_with_convert_hint(tmp_path, base):
    p = tmp_path / "model.pt"
    torch.save(base, p)
    with pytest.raises(PeruError) as e:
        load_state_dict(p)
    assert "pickle" in _one_sentence(e) and "python -m peru_core convert" in str(e.value)
    raw = tmp_path / "model.bin"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(PeruError, match="pickle"):
        load_state_dict(raw)
    with pytest.raises(PeruError, match="pickle"):
        load_state_dict(raw.read_bytes())


def test_safetensors_whose_header_length_looks_like_pickle_is_read(tmp_path):
    """A header of 640 bytes starts the file with 0x80 0x02, pickle's PROTO 2; the JSON `{` after it decides, in
    every place that sniffs for pickles (reader, zoo writer, converter, zoo validation)."""
    from safetensors.torch import save

    from peru_core.convert import _looks_pickled
    from peru_core.zoo.validate import checkpoint_shapes
    from peru_core.zoo.writer import _is_pickle as writer_sees_pickle

    sd = {"w": torch.arange(6.0).view(2, 3)}
    data = next(d for d in (save(sd, metadata={"pad": "x" * n}) for n in range(800)) if d[:2] == b"\x80\x02")
    path = tmp_path / "odd_header.safetensors"
    path.write_bytes(data)
    assert torch.equal(load_state_dict(path)["w"], sd["w"])
    assert not writer_sees_pickle(path) and not _looks_pickled(path)
    assert checkpoint_shapes(path) == ({"w": (2, 3)}, False)
    torch.save(sd, tmp_path / "real.pt")
    assert writer_sees_pickle(tmp_path / "real.pt") and _looks_pickled(tmp_path / "real.pt")


def test_truncated_file_refused(tmp_path, base):
    data = save_state_dict(base, tmp_path / "b.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(PeruError) as e:
        load_state_dict(cut)
    assert "truncated" in _one_sentence(e)
    with pytest.raises(PeruError, match="truncated"):
        load_state_dict(data[:-10])
    cut.write_bytes(data[:20])  # inside the header
    with pytest.raises(PeruError, match="truncated|corrupt"):
        load_state_dict(cut)


@pytest.mark.parametrize("payload", [b"", b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx",
                                     b"\xff" * 64])
def test_corrupt_files_refused(tmp_path, payload):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(payload)
    with pytest.raises(PeruError) as e:
        load_state_dict(p)
    _one_sentence(e)


def test_paths_and_size_limit(tmp_path, base):
    with pytest.raises(PeruError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(PeruError, match="folder"):
        load_state_dict(tmp_path)
    p = save_state_dict(base, tmp_path / "b.safetensors")
    with pytest.raises(PeruError, match="memory"):
        load_state_dict(p, max_bytes=100)


# ------------------------------------------------------------------------------------------------ validation
def test_valid_checkpoints_pass(base, finetuned, tuned):
    validate_base(base)
    validate_finetuned(base, finetuned[0])
    validate_finetuned(base, tuned[0], prefix=PREFIX)


@pytest.mark.parametrize("case, pattern", [
    ("missing", "missing keys"), ("extra", "lacks"), ("shape", "shape"), ("dtype", "float16"),
    ("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("int", "int64"), ("partial-without-prefix", "missing keys"),
])
def test_bad_finetuned(base, tuned, case, pattern):
    sd = finetune(base, 0)
    k = "visual.blocks.0.mlp.c_fc.weight"
    if case == "missing":
        del sd[k]
    elif case == "extra":
        sd["visual.new.weight"] = torch.zeros(2)
    elif case == "shape":
        sd[k] = torch.zeros(3, 3)
    elif case == "dtype":
        sd[k] = sd[k].half()
    elif case == "nan":
        sd[k][0, 0] = math.nan
    elif case == "inf":
        sd[k][1, 1] = math.inf
    elif case == "int":
        sd[k] = torch.zeros(8, 4, dtype=torch.int64)
    else:
        sd = tuned[0]
    with pytest.raises(PeruError, match=pattern) as e:
        validate_finetuned(base, sd, name="ft")
    _one_sentence(e)


def test_prefix_checks_only_the_tuned_part(base, tuned):
    base = dict(base, **{"text.ids": torch.arange(3)})  # integer buffer outside the prefix: fine
    validate_base(base, prefix=PREFIX)
    validate_finetuned(base, tuned[0], prefix=PREFIX)
    with pytest.raises(PeruError, match="int64"):
        validate_base(base)
    with pytest.raises(PeruError, match="lacks"):
        validate_finetuned(base, finetune(base, 1), prefix=PREFIX)
    with pytest.raises(PeruError, match="no tensors"):
        validate_base(base, prefix="nothing.")


def test_task_names():
    validate_task_names(["a", "b"])
    with pytest.raises(PeruError, match="empty"):
        validate_task_names([])
    with pytest.raises(PeruError, match="named 'a' twice|Two tasks"):
        validate_task_names(["a", "b", "a"])


def test_validate_upload(tmp_path, base, tuned):
    data = save_state_dict(tuned[0], tmp_path / "t.safetensors").read_bytes()
    sd = validate_upload(data, "t.safetensors", base=base, prefix=PREFIX)
    assert set(sd) == set(tuned[0])
    with pytest.raises(PeruError, match="t.safetensors"):
        validate_upload(data, "t.safetensors", base=base)  # whole-model check: keys missing
    with pytest.raises(PeruError, match="truncated"):
        validate_upload(data[:-4], "t.safetensors")


def test_atomic_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("x")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
    with atomic_dir(out) as tmp:  # into an existing folder
        (tmp / "b.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------------------------------ LoRA adapters
def test_adapter_scale_and_layout(tmp_path, base):
    fac = random_factors(1, LORA_TARGETS)
    ad = load_lora_adapter(write_adapter(tmp_path / "ad", fac, r=2, lora_alpha=6))
    validate_adapter(base, ad)
    assert set(ad) == {f"{m}.weight" for m in LORA_TARGETS} and ad.name == "ad"
    for m, (A, B) in fac.items():
        f = ad[f"{m}.weight"]
        assert f.scale == 3.0 and f.rank == 2
        assert torch.allclose(f.delta(), 3.0 * B @ A)


def test_adapter_rslora_and_patterns(tmp_path):
    fac = random_factors(2, LORA_TARGETS, r=4)
    fac["visual.blocks.0.mlp.c_proj"] = random_factors(3, {"visual.blocks.0.mlp.c_proj": (4, 8)}, r=2)[
        "visual.blocks.0.mlp.c_proj"]
    folder = write_adapter(tmp_path / "ad", fac, r=4, lora_alpha=8, rank_pattern={"c_proj": 2},
                           alpha_pattern={"c_proj": 5})
    ad = load_lora_adapter(folder)
    assert ad["visual.blocks.0.mlp.c_fc.weight"].scale == 8 / 4
    assert ad["visual.blocks.0.mlp.c_proj.weight"].scale == 5 / 2
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(use_rslora=True, rank_pattern={}, alpha_pattern={})
    ad = load_lora_adapter((json.dumps(dict(cfg, rank_pattern={"c_proj": 2})).encode(),
                            (folder / "adapter_model.safetensors").read_bytes()))
    assert ad["visual.blocks.0.mlp.c_fc.weight"].scale == pytest.approx(8 / math.sqrt(4))
    assert ad["visual.blocks.0.mlp.c_proj.weight"].scale == pytest.approx(8 / math.sqrt(2))


def test_adapter_fan_in_fan_out(tmp_path, base):
    # PEFT keeps A (r x in_features) and B (out_features x r) but the base stores the weight as (in x out): the
    # loader returns factors in the base's layout, so delta = scale * B' @ A' is the transposed product
    A, B = torch.randn(2, 8), torch.randn(4, 2)  # module with in=8, out=4; base weight stored as (8, 4)
    base = {"w.weight": torch.randn(8, 4)}
    ad = load_lora_adapter(write_adapter(tmp_path / "ad", {"w": (A, B)}, fan_in_fan_out=True))
    validate_adapter(base, ad)
    assert torch.allclose(ad["w.weight"].delta(), (2.0 * B @ A).T)


def test_real_peft_adapters_match_peft_forward(tmp_path):
    """save_pretrained of a PEFT model (Linear + transformers Conv1D with fan_in_fan_out) reloads to the weights
    PEFT merges itself."""
    peft = pytest.importorskip("peft")
    from transformers.pytorch_utils import Conv1D

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 5)
            self.proj = torch.nn.Linear(5, 3)
            self.conv = Conv1D(4, 3)  # GPT-2 style: weight (in=3, out=4)

    for fifo, targets, rs, patterns in ((False, ["fc", "proj"], True, True), (True, ["conv"], False, False)):
        torch.manual_seed(0)
        net = Net()
        base = {k: v.clone() for k, v in net.state_dict().items()}
        cfg = peft.LoraConfig(r=2, lora_alpha=3, target_modules=targets, fan_in_fan_out=fifo, use_rslora=rs,
                              rank_pattern={"proj": 1} if patterns else {},
                              alpha_pattern={"fc": 7} if patterns else {}, init_lora_weights=False)
        model = peft.get_peft_model(net, cfg)
        model.save_pretrained(tmp_path / f"ad{fifo}")
        merged = model.merge_and_unload().state_dict()
        ad = load_lora_adapter(tmp_path / f"ad{fifo}", base_keys=base.keys())
        validate_adapter(base, ad)
        assert set(ad) == {f"{t}.weight" for t in targets}
        for k, f in ad.items():
            assert torch.allclose(base[k] + f.delta(), merged[k], atol=1e-6), k


def test_multihead_attention_in_proj(tmp_path):
    """A PEFT adapter on nn.MultiheadAttention ("attn") updates the packed in_proj_weight."""
    peft = pytest.importorskip("peft")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    blk = Block().eval()
    base = {k: v.clone() for k, v in blk.state_dict().items()}
    model = peft.get_peft_model(blk, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["attn"],
                                                     init_lora_weights=False)).eval()
    with torch.no_grad():  # isolate in_proj: PEFT 0.21 applies out_proj's update twice in its own forward
        for n, p in model.named_parameters():
            if "out_proj.lora_B" in n:
                p.zero_()
        x = torch.randn(3, 1, 8)
        y = model(x)
    model.save_pretrained(tmp_path / "ad")
    ad = load_lora_adapter(tmp_path / "ad", base_keys=base.keys())
    validate_adapter(base, ad)
    assert "attn.in_proj_weight" in ad and ad["attn.in_proj_weight"].shape == (24, 8)
    blk2 = Block().eval()
    blk2.load_state_dict({k: base[k] + (ad[k].delta() if k in ad else 0) for k in base})
    with torch.no_grad():
        assert torch.allclose(blk2(x), y, atol=1e-5)


@pytest.mark.parametrize("case, pattern", [
    ("not-in-base", "not in the base"), ("shape", "shape"), ("no-B", "lora_A but not lora_B"),
    ("rank", "config says"), ("nan", "NaN"), ("no-config", "adapter_config.json"),
    ("bin", "pickle"), ("dora", "DoRA"), ("other-key", "not a LoRA"), ("not-dir", "not a folder"),
])
def test_bad_adapters(tmp_path, base, case, pattern):
    fac = random_factors(4, LORA_TARGETS)
    cfg = {}
    if case == "not-in-base":
        fac["visual.missing.layer"] = fac["visual.blocks.0.mlp.c_fc"]
    elif case == "shape":
        fac["visual.blocks.0.mlp.c_fc"] = (torch.randn(2, 5), torch.randn(8, 2))
    elif case == "rank":
        cfg = {"rank_pattern": {"c_fc": 3}}
    elif case == "nan":
        fac["visual.blocks.0.mlp.c_fc"][0][0, 0] = math.nan
    elif case == "dora":
        cfg = {"use_dora": True}
    folder = write_adapter(tmp_path / "ad", fac, **cfg)
    if case == "no-B":
        save_state_dict({"base_model.model.x.lora_A.weight": torch.zeros(2, 3)}, folder / "adapter_model.safetensors")
    elif case == "no-config":
        (folder / "adapter_config.json").unlink()
    elif case == "bin":
        (folder / "adapter_model.safetensors").unlink()
        torch.save({}, folder / "adapter_model.bin")
    elif case == "other-key":
        save_state_dict({"base_model.model.x.lora_embedding_A": torch.zeros(2, 3)},
                        folder / "adapter_model.safetensors")
    elif case == "not-dir":
        folder = folder / "adapter_config.json"
    with pytest.raises(PeruError, match=pattern) as e:
        validate_adapter(base, load_lora_adapter(folder))
    _one_sentence(e)
