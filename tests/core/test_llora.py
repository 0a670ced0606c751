"""L-LoRA (partial linearization of LoRA, Tang et al., ICLR 2024, https://arxiv.org/abs/2310.04742) as a third kind
of fine-tune: the linearized layer equals LoRA with A frozen at A_0, and the adapters flow through every path."""
import json
import shutil

import pandas as pd
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.func import functional_call, jvp

from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.io import load_state_dict
from peru_core.spec import Mode, RunSpec, Source
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime


def _lora_linear(rank: int = 3, alpha: float = 6.0) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4))
    return get_peft_model(net, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["0"]))


def _lora_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("b0_zero", [True, False])
def test_linearized_lora_layer_is_the_first_order_update(b0_zero):
    """jvp of the LoRA layer at (A_0, B_0) along (dA, dB) gives h = W_0 x + s (B_0 A_0 + dB A_0 + B_0 dA) x; with
    PEFT's default B_0 = 0 that is exactly the ordinary LoRA forward with A = A_0 and B = dB."""
    model = _lora_linear()
    p0 = _lora_params(model)
    (ka,), (kb,) = [k for k in p0 if "lora_A" in k], [k for k in p0 if "lora_B" in k]
    assert torch.count_nonzero(p0[kb]) == 0  # PEFT's initialisation
    if not b0_zero:
        p0[kb] = 0.3 * torch.randn(p0[kb].shape, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    d = {ka: torch.randn(p0[ka].shape, generator=g), kb: torch.randn(p0[kb].shape, generator=g)}
    x = torch.randn(7, 5, generator=g)

    def layer(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (x,))

    f0, df = jvp(layer, (p0,), (d,))
    linearized = f0 + df
    lin = model.base_model.model[0]
    w0, b = lin.base_layer.weight.detach(), lin.base_layer.bias.detach()
    s = lin.scaling["default"]
    A0, B0, dA, dB = p0[ka], p0[kb], d[ka], d[kb]
    formula = x @ w0.T + b + s * x @ (B0 @ A0 + dB @ A0 + B0 @ dA).T
    torch.testing.assert_close(linearized, formula, atol=1e-5, rtol=1e-5)
    if b0_zero:  # an ordinary PEFT adapter with A frozen at A_0 and only B trained computes the same function
        frozen_a = layer({ka: A0, kb: dB})
        torch.testing.assert_close(linearized, frozen_a, atol=1e-5, rtol=1e-5)


def test_zoo_manifest_has_three_kinds(tiny_zoo_dir, tmp_path):
    zoo = load_zoo(tiny_zoo_dir)
    assert all(t.finetuned and t.lora and t.llora for t in zoo.tasks)
    assert any("llora" in str(p) for p in zoo.files())  # adapters are hashed: a changed one changes the key
    rt = ZooRuntime(zoo)
    assert ex.available_sources(rt) == [Source.FULL, Source.LORA, Source.LLORA]
    # a zoo of L-LoRA fine-tunes only is a valid zoo with one kind
    only = tmp_path / "only"
    shutil.copytree(tiny_zoo_dir, only)
    raw = json.loads((only / "zoo.json").read_text())
    for t in raw["tasks"]:
        del t["finetuned"], t["lora"]
    (only / "zoo.json").write_text(json.dumps(raw))
    assert ex.available_sources(ZooRuntime(load_zoo(only))) == [Source.LLORA]
    raw["tasks"][0].pop("llora")
    (only / "zoo.json").write_text(json.dumps(raw))
    with pytest.raises(PeruError, match="'llora'"):
        load_zoo(only)


def test_llora_adapters_fold_like_peft(tiny_zoo_dir):
    """A merge's input from an L-LoRA adapter is PEFT's own merge_and_unload of it."""
    from peru_core.models import create_clip
    from tests.tiny_zoo import ARCH, TINY_CONFIG

    rt = ZooRuntime(load_zoo(tiny_zoo_dir))
    folded = ex.source_model(rt, Source.LLORA, 0)
    model = create_clip(ARCH, TINY_CONFIG)
    model.load_state_dict(load_state_dict(tiny_zoo_dir / "base.safetensors"))
    merged = PeftModel.from_pretrained(model, str(tiny_zoo_dir / "llora" / "stripes")).merge_and_unload().state_dict()
    for k, v in folded.items():
        torch.testing.assert_close(v, merged[k], atol=1e-6, rtol=1e-6)
    assert not torch.equal(folded["visual.transformer.resblocks.0.mlp.c_fc.weight"],
                           ex.source_model(rt, Source.LORA, 0)["visual.transformer.resblocks.0.mlp.c_fc.weight"])
    # PERU-LoRA at the full rank is the fine-tune itself
    r = ex.lora_rank(rt, Source.LLORA)
    full = ex.task_model(rt, RunSpec.make("peru-lora", "llora", rank=r), 0)
    for k, v in folded.items():
        torch.testing.assert_close(full[k], v, atol=1e-5, rtol=1e-5)


def test_llora_specs_are_labelled():
    assert RunSpec.make("merge", "llora", "task_arithmetic").label.startswith("Task Arithmetic [L-LoRA]")
    assert RunSpec.make("single-task", "llora").label == "Single-Task [L-LoRA]"
    assert RunSpec.make("peru-lora", "llora", rank=2).label == "PERU-LoRA [L-LoRA] q=2"
    assert RunSpec.make("peru-lora", rank=2).label == "PERU-LoRA q=2"  # LoRA stays the default, keys unchanged
    assert RunSpec.make("peru-lora", "full", rank=2).source is Source.LORA


def test_cli_lora_on_an_llora_adapter(tiny_zoo_dir, tmp_path, capsys):
    from peru_core.cli import main

    base = tmp_path / "visual.safetensors"
    from peru_core.io import save_state_dict

    save_state_dict({k: v for k, v in load_state_dict(tiny_zoo_dir / "base.safetensors").items()
                     if k.startswith("visual.")}, base)
    rt = ZooRuntime(load_zoo(tiny_zoo_dir))
    r = ex.lora_rank(rt, Source.LLORA)
    assert main(["lora", "--base", str(base), "--adapters", str(tiny_zoo_dir / "llora" / "stripes"),
                 "--rank", str(r), "--out", str(tmp_path / "out")]) == 0
    got = load_state_dict(tmp_path / "out" / "stripes.safetensors")
    want = ex.source_model(rt, Source.LLORA, 0)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=1e-5, rtol=1e-5)


def test_sweep_table_has_llora_rows(tiny_zoo_dir, tmp_path, peru_home, capsys):
    from peru_core.cli import main

    out = tmp_path / "t.csv"
    assert main(["sweep", "--zoo", str(tiny_zoo_dir), "--methods", "task_arithmetic", "--keeps", "10",
                 "--ranks", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out, index_col=0)
    for row in ("Single-Task [L-LoRA]", "PERU-LoRA [L-LoRA] q=2", "Single-Task [LoRA]", "PERU-LoRA q=2"):
        assert row in table.index, row
    assert any(i.startswith("Task Arithmetic [L-LoRA]") for i in table.index)
    spec_modes = {s.mode for s in ex.paper_specs(ZooRuntime(load_zoo(tiny_zoo_dir))) if s.source is Source.LLORA}
    assert spec_modes == {Mode.SINGLE_TASK, Mode.MERGE, Mode.PERU_LORA}
