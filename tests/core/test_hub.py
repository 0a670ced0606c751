"""hf:// references resolve through a hub cache in the library's real layout, offline, and fail in one sentence."""
import json

import pytest
import torch
from safetensors.torch import save

from hub_cache import add_repo
from peru_core import hub
from peru_core.errors import PeruError
from peru_core.io import load_lora_adapter, load_state_dict


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty cache under a fresh HF_HOME, offline: set at run time, after huggingface_hub was imported."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf_home" / "hub"


def one_sentence(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".") and "Traceback" not in msg, msg
    return msg


def test_parse_ref_types_revisions_and_paths():
    r = hub.parse_ref("hf://openai/clip-vit-base-patch32")
    assert (r.repo_id, r.repo_type, r.revision, r.subpath) == ("openai/clip-vit-base-patch32", "model", None, "")
    r = hub.parse_ref("hf://tanganke/sun397", "dataset")
    assert r.repo_type == "dataset"
    r = hub.parse_ref("hf://datasets/ufldl-stanford/svhn@abc/cropped_digits")  # explicit type wins over the default
    assert (r.repo_id, r.repo_type, r.revision, r.subpath) == ("ufldl-stanford/svhn", "dataset", "abc",
                                                               "cropped_digits")
    assert hub.parse_ref("hf://models/a/b", "dataset").repo_type == "model"
    for bad in ("hf://only-a-name", "hf://"):
        with pytest.raises(PeruError) as e:
            hub.parse_ref(bad)
        assert "hf://owner/repo" in one_sentence(e)
    assert hub.is_hub_ref("hf://a/b") and not hub.is_hub_ref("a/b")


def test_cache_dir_follows_the_environment_at_each_call(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h1"))
    assert hub.cache_dir() == tmp_path / "h1" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c2"))
    assert hub.cache_dir() == tmp_path / "c2"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()


def test_checkpoint_revision_and_subpath_resolve_from_the_cache(cache):
    t1 = {"w": torch.arange(6.0).reshape(2, 3)}
    t2 = {"w": torch.ones(2, 3)}
    snap, commit = add_repo(cache, "owner/model", {"model.safetensors": save(t1), "sub/other.safetensors": save(t2)})
    add_repo(cache, "owner/model", {"model.safetensors": save(t2)}, revision="v2")
    assert torch.equal(load_state_dict("hf://owner/model")["w"], t1["w"])  # the repo's model.safetensors
    assert torch.equal(load_state_dict("hf://owner/model@v2")["w"], t2["w"])  # a branch
    assert torch.equal(load_state_dict(f"hf://owner/model@{commit}")["w"], t1["w"])  # a commit
    assert torch.equal(load_state_dict("hf://owner/model/sub/other.safetensors")["w"], t2["w"])
    assert hub.local_path("hf://owner/model") == snap / "model.safetensors"
    assert str(hub.local_path("plain/path.safetensors")) == "plain/path.safetensors"


def test_adapter_folder_resolves(cache):
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["lin"]}
    g = torch.Generator().manual_seed(0)
    weights = {"base_model.model.lin.lora_A.weight": torch.randn(2, 5, generator=g),
               "base_model.model.lin.lora_B.weight": torch.randn(3, 2, generator=g)}
    add_repo(cache, "owner/adapter", {"task/adapter_config.json": json.dumps(cfg).encode(),
                                      "task/adapter_model.safetensors": save(weights)})
    ad = load_lora_adapter("hf://owner/adapter/task")
    assert ad["lin.weight"].scale == 2.0 and torch.equal(ad["lin.weight"].A, weights[
        "base_model.model.lin.lora_A.weight"])
    with pytest.raises(PeruError) as e:
        load_lora_adapter("hf://owner/adapter")  # the root holds no adapter_config.json
    assert "adapter_config.json" in one_sentence(e)


def test_missing_offline_is_one_sentence_naming_repo_and_fetch_command(cache):
    add_repo(cache, "owner/model", {"config.json": b"{}"})
    with pytest.raises(PeruError) as e:
        load_state_dict("hf://nobody/unknown-repo")
    msg = one_sentence(e)
    assert "hf://nobody/unknown-repo" in msg and "hf download nobody/unknown-repo" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(PeruError) as e:
        load_state_dict("hf://owner/model")  # the repo is cached, its model.safetensors is not
    assert "model.safetensors" in one_sentence(e)
    with pytest.raises(PeruError) as e:
        hub.resolve_folder("hf://tanganke/sun397", default_type="dataset", patterns=["*test*.parquet"])
    assert "--repo-type dataset" in one_sentence(e)


def test_cli_takes_hf_references(cache, tmp_path):
    from safetensors.torch import load_file

    from peru_core import cli

    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(3, 4, generator=g)}
    fts = [{"w": base["w"] + torch.randn(3, 4, generator=g)} for _ in range(2)]
    add_repo(cache, "o/base", {"model.safetensors": save(base)})
    for i, ft in enumerate(fts):
        add_repo(cache, f"o/t{i}", {"model.safetensors": save(ft)})
    out = tmp_path / "merged.safetensors"
    assert cli.main(["merge", "--base", "hf://o/base", "--finetuned", "hf://o/t0", "hf://o/t1", "--method",
                     "task_arithmetic", "--param", "lam=0.5", "--out", str(out)]) == 0
    expected = base["w"] + 0.5 * ((fts[0]["w"] - base["w"]) + (fts[1]["w"] - base["w"]))
    torch.testing.assert_close(load_file(str(out))["w"], expected)
