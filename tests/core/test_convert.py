"""The pickle converter: real checkpoints come through, hostile ones never run."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file

from peru_core.cli import main
from peru_core.convert import RISK, convert_checkpoint, read_pickled_checkpoint
from peru_core.errors import PeruError


def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(16, CLIPVisionCfg(layers=1, width=32, head_width=8, patch_size=4, image_size=16),
                CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=4, layers=1)).eval()


class ImageEncoder(torch.nn.Module):
    """Like task vectors' src.modeling.ImageEncoder: the CLIP plus non-tensor attributes, text tower removed."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.model = clip
        self.cache_dir = "/somewhere"
        self.train_preprocess = {"mean": (0.5, 0.5, 0.5)}
        delattr(self.model, "transformer")


@pytest.fixture
def encoder_pickle(tmp_path, monkeypatch):
    """An ImageEncoder saved whole from a module named like the task-vectors repo's, which is gone at load time."""
    pkg, fake = types.ModuleType("src"), types.ModuleType("src.modeling")
    fake.ImageEncoder, pkg.modeling = ImageEncoder, fake
    monkeypatch.setitem(sys.modules, "src", pkg)
    monkeypatch.setitem(sys.modules, "src.modeling", fake)
    monkeypatch.setattr(ImageEncoder, "__module__", "src.modeling")
    enc = ImageEncoder(tiny_clip())
    path = tmp_path / "finetuned.pt"
    torch.save(enc, path)
    monkeypatch.delitem(sys.modules, "src.modeling")  # a loader that imports would now fail
    monkeypatch.delitem(sys.modules, "src")
    return path, enc


def test_whole_module_pickle_converts_to_open_clip_names(encoder_pickle, tmp_path):
    path, enc = encoder_pickle
    out = tmp_path / "out.safetensors"
    done = convert_checkpoint(path, out)
    expected = {k[len("model."):]: v for k, v in enc.state_dict().items()}
    got = load_file(out)
    assert set(got) == set(expected)  # parameters and persistent buffers only (attn_mask is not persistent)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert done.tensors == len(expected) and "src.modeling.ImageEncoder" in done.neutralised
    assert "never run" in done.explain() and RISK in done.explain()
    assert "src.modeling" not in sys.modules


def test_legacy_pre_1_6_format(tmp_path):
    clip = tiny_clip()
    torch.save(clip, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    sd, found = read_pickled_checkpoint(tmp_path / "legacy.pt")
    ref = clip.state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], v) for k, v in ref.items())
    assert "open_clip.model.CLIP" in found


@pytest.mark.parametrize("wrap", ["plain", "lightning", "ddp_fp16"])
def test_state_dict_pickles(tmp_path, wrap):
    sd = tiny_clip().state_dict()
    if wrap == "lightning":
        obj = {"state_dict": sd, "epoch": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(4)}}}}
    elif wrap == "ddp_fp16":
        obj = {f"module.{k}": v.half() for k, v in sd.items()}
    else:
        obj = sd
    src = tmp_path / "sd.pt"
    torch.save(obj, src)
    convert_checkpoint(src, tmp_path / "sd.safetensors", only="visual." if wrap == "plain" else None)
    got = load_file(tmp_path / "sd.safetensors")
    keep = {k: v for k, v in sd.items() if wrap != "plain" or k.startswith("visual.")}
    assert set(got) == set(keep)
    for k, v in keep.items():
        assert got[k].dtype == (torch.float16 if wrap == "ddp_fp16" else v.dtype)
        assert torch.equal(got[k], v.to(got[k].dtype))


def test_hf_pickle_is_mapped_to_open_clip(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, image_size=16, patch_size=4)
    hf = transformers.CLIPVisionModel(cfg)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    sd, _ = read_pickled_checkpoint(tmp_path / "pytorch_model.bin")
    # transformers 5 names a CLIPVisionModel's keys without "vision_model."; hub files have it: both map.
    (q,) = [v for k, v in hf.state_dict().items() if k.endswith("encoder.layers.0.self_attn.q_proj.weight")]
    assert torch.equal(sd["visual.transformer.resblocks.0.attn.in_proj_weight"][:32], q)


class Hostile:
    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return self.payload


def hostile_payloads(marker):
    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "eval": (eval, (f"open({str(marker)!r}, 'w')",)),
        "exec": (exec, (f"open({str(marker)!r}, 'w').close()",)),
    }


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec"])
def test_hostile_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": torch.zeros(2), "x": Hostile(hostile_payloads(marker)[kind])}, src)
    out = tmp_path / "evil.safetensors"
    with pytest.raises(PeruError, match="refused as hostile") as err:
        convert_checkpoint(src, out)
    assert "system" in str(err.value) or kind in str(err.value)
    assert not marker.exists() and not out.exists()
    # The fixture is truly hostile: torch's unrestricted loader does run it.
    torch.load(src, weights_only=False)
    assert marker.exists()


def test_unknown_callable_is_neutralised_not_run(tmp_path):
    """A side effect through a callable outside the refused list (Path.touch) is recorded, never called."""
    from pathlib import Path

    marker = tmp_path / "touched"
    src = tmp_path / "sneaky.pt"
    torch.save({"visual.conv1.weight": torch.ones(2, 3), "x": Hostile((Path.touch, (marker,)))}, src,
               pickle_protocol=4)
    done = convert_checkpoint(src, tmp_path / "ok.safetensors")
    assert not marker.exists() and "pathlib.Path.touch" in done.neutralised
    assert set(load_file(tmp_path / "ok.safetensors")) == {"visual.conv1.weight"}
    torch.load(src, weights_only=False)  # the unrestricted loader does call it
    assert marker.exists()


def test_cli_convert_and_refusal(encoder_pickle, tmp_path, capsys):
    path, _ = encoder_pickle
    assert main(["convert", str(path), str(tmp_path / "ok.safetensors")]) == 0
    cap = capsys.readouterr()
    assert "restricted unpickler" in cap.err and "Wrote" in cap.out
    marker = tmp_path / "pwned"
    torch.save([Hostile((os.system, (f"touch {marker}",)))], tmp_path / "evil.pt")
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "no.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err and not marker.exists()


def test_torchscript_and_non_checkpoints_are_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ts.pt")
    with pytest.raises(PeruError, match="TorchScript"):
        read_pickled_checkpoint(tmp_path / "ts.pt")
    torch.save({"a": 1}, tmp_path / "empty.pt")
    with pytest.raises(PeruError, match="no tensors"):
        read_pickled_checkpoint(tmp_path / "empty.pt")
    torch.save({"layer.weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(PeruError, match="CLIP"):
        read_pickled_checkpoint(tmp_path / "other.pt")


def test_hf_safetensors_is_renamed_without_the_unpickler(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, image_size=16, patch_size=4, projection_dim=8)
    hf = transformers.CLIPVisionModelWithProjection(cfg)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    done = convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "oc.safetensors")
    got = load_file(tmp_path / "oc.safetensors")
    assert done.neutralised == () and torch.equal(got["visual.proj"], hf.state_dict()["visual_projection.weight"].t())
