"""The compute device: resolution and its errors, and the GPU kernels giving the CPU kernels' exact answers.

The device-parametrised tests run on every device this machine has (the CPU always; CUDA where a GPU is present, so
``PERU_DEVICE=cuda python -m pytest tests/core`` on a GPU machine compares the two paths). The torch kernels that a
GPU runs are also run on the CPU here, so CI without a GPU checks their logic against the numpy path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import finetune, random_sd
from peru_core import experiments as ex
from peru_core.device import available_devices, default_device, resolve_device
from peru_core.errors import PeruError
from peru_core.lowrank import task_vector_spectra
from peru_core.merging import get_method
from peru_core.merging._reference import naive_ties
from peru_core.merging.ties import ties_thresholds
from peru_core.sparse import TopM, keep_count, sorted_top_torch, top_segments_numpy, top_segments_torch
from peru_core.spec import RunSpec
from peru_core.statedict import Layout, flatten
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime

DEVICES = available_devices()


def tied_vector(n: int = 4001, seed: int = 0) -> torch.Tensor:
    """Values on a coarse grid, signs mixed, zeros included: many ties at every threshold."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-12, 13, (n,), generator=g) / 4.0).float()


def test_resolve_device(monkeypatch):
    monkeypatch.delenv("PERU_DEVICE", raising=False)
    assert resolve_device(None) == torch.device(default_device()) == torch.device(DEVICES[0])
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    monkeypatch.setenv("PERU_DEVICE", "cpu")
    assert resolve_device(None).type == "cpu"
    with pytest.raises(PeruError, match="Unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(PeruError, match="not supported"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PeruError, match="no usable CUDA GPU; use cpu") as err:
        resolve_device("cuda")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("PERU_DEVICE", "cuda")
    with pytest.raises(PeruError, match="unset PERU_DEVICE"):
        resolve_device(None)


@pytest.mark.parametrize("device", DEVICES)
def test_sorted_top_torch_is_the_numpy_order(device):
    """The GPU selection (a stable descending sort) gives the numpy path's positions in the same order."""
    x = tied_vector()
    for k in (0, 1, 7, 100, 2000, x.numel()):
        pos, vals = sorted_top_torch(x.to(device), k)
        ref, = top_segments_numpy(x.numpy(), [(0, x.numel())], [k])[0]
        assert np.array_equal(pos, ref), k
        assert np.array_equal(vals, x.numpy()[ref]) and pos.dtype == np.int64


@pytest.mark.parametrize("device", DEVICES)
def test_top_segments_torch_equals_numpy(device):
    x = tied_vector(3000, seed=1)
    segs = [(0, 1000), (1000, 1001), (1001, 2500), (2500, 3000)]
    counts = [100, 1, 0, 499]
    want_pos, want_vals = top_segments_numpy(x.numpy(), segs, counts)
    got_pos, got_vals = top_segments_torch(x, segs, counts, torch.device(device))
    for a, b, c, d in zip(got_pos, want_pos, got_vals, want_vals):
        assert np.array_equal(a, b) and np.array_equal(c, d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["global", "per-tensor"])
def test_topm_on_every_device_equals_cpu(device, scope):
    vec = {"a": tied_vector(1500, 2).view(30, 50), "b": tied_vector(7, 3), "c": tied_vector(2000, 4)}
    layout = Layout.of(vec)
    on_dev = TopM(flatten(vec, layout), layout, scope, device=device)
    on_cpu = TopM(flatten(vec, layout), layout, scope, device="cpu")
    assert on_dev.device.type == device
    for (m, got), (_, want) in zip(on_dev.sweep([0.0, 0.1, 5.0, 33.3, 100.0]),
                                   on_cpu.sweep([0.0, 0.1, 5.0, 33.3, 100.0])):
        assert np.array_equal(got.indices, want.indices) and np.array_equal(got.values, want.values), m
        assert got.nnz == sum(keep_count(e - s, m) for s, e in on_cpu._segments())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [0.0, 20.0, 55.5, 100.0])
def test_ties_on_every_device_matches_reference(device, k):
    base = random_sd(11)
    fts = [finetune(base, t) for t in range(4)]
    fts[1]["visual.ln_post.weight"] = fts[0]["visual.ln_post.weight"].clone()  # exact ties between tasks
    out = get_method("ties")(base, fts, k=k, lam=0.8, device=device)
    ref = naive_ties(base, fts, k, 0.8)
    for key in base:
        assert out[key].device.type == "cpu"  # results always come back to host memory
        torch.testing.assert_close(out[key], ref[key], atol=1e-6, rtol=0)
    assert ties_thresholds(base, fts, k, list(base), device=device) == \
        ties_thresholds(base, fts, k, list(base), device="cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_task_vector_spectra_on_every_device(device):
    base = random_sd(3)
    ft = finetune(base, 0)
    got = task_vector_spectra(base, ft, device=device)
    want = {k: torch.linalg.svdvals((ft[k] - base[k]).double()).numpy() for k in ft if ft[k].dim() == 2}
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_runtime_device_reaches_the_kernels(tiny_zoo_dir, monkeypatch):
    """A zoo runtime on a device passes it to the merge and to every top-m% selector it builds."""
    seen = []
    real = TopM.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.device)

    monkeypatch.setattr(TopM, "__init__", spy)
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), device=DEVICES[0])
    monkeypatch.setenv("PERU_DEVICE", "meta")  # any kernel left to pick its own device now fails loudly
    ex.task_model(rt, RunSpec.make("peru-fft", "full", "ties", {"k": 20.0, "lam": 1.0}, keep=5), 0)
    assert seen and all(d == rt.device for d in seen)


def test_cli_bad_device_is_one_line(tmp_path, capsys, base):
    from peru_core.cli import main
    from peru_core.io import save_state_dict

    save_state_dict(base, tmp_path / "b.safetensors")
    save_state_dict(finetune(base, 0), tmp_path / "t.safetensors")
    code = main(["merge", "--base", str(tmp_path / "b.safetensors"), "--finetuned", str(tmp_path / "t.safetensors"),
                 "--method", "ties", "--device", "tpu", "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Unknown device 'tpu'" in err and "\n" not in err
    assert not (tmp_path / "o.safetensors").exists()
    # checked before any checkpoint is read: a missing fine-tune is not what reuse reports
    code = main(["reuse", "--base", str(tmp_path / "b.safetensors"), "--finetuned", str(tmp_path / "nope.safetensors"),
                 "--mode", "post-pruning", "--keep", "5", "--device", "tpu", "--out", str(tmp_path / "parts")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Unknown device 'tpu'" in err and not (tmp_path / "parts").exists()
