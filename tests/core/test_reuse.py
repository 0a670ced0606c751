"""Post-Pruning, PERU-FFT and PERU-LoRA against their formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LORA_TARGETS, PREFIX, random_factors, write_adapter
from peru_core.errors import PeruError
from peru_core.io import load_lora_adapter
from peru_core.merging import get_method
from peru_core.taskpart import lowrank_part
from peru_core.reuse import (LoraReuse, SparseReuse, peru_fft, peru_lora, post_pruning,
                             shared_model)
from peru_core.sparse import keep_count, top_m
from peru_core.statedict import task_vector


def masked(v: dict, keep: float) -> dict:
    """Reference top-m% (global): zero all but the keep_count largest |v| (distinct random values)."""
    flat = torch.cat([t.reshape(-1) for t in v.values()])
    k = keep_count(flat.numel(), keep)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        mask[flat.abs().topk(k).indices] = True
    out, off = {}, 0
    for key, t in v.items():
        out[key] = (flat * mask)[off:off + t.numel()].view(t.shape)
        off += t.numel()
    return out


@pytest.mark.parametrize("keep", [0.0, 5.0, 30.0, 100.0])
def test_post_pruning_formula(base, tuned, keep):
    out = post_pruning(base, tuned[1], keep)
    ref = masked(task_vector(tuned[1], base), keep)
    assert set(out) == set(tuned[1])
    for k in out:
        assert torch.allclose(out[k], base[k] + ref[k], atol=1e-6)


@pytest.mark.parametrize("keep", [0.0, 10.0, 100.0])
def test_peru_fft_formula(base, tuned, keep):
    merged = get_method("task_arithmetic")(base, tuned, lam=0.3)
    out = peru_fft(merged, tuned[0], keep)
    u = {k: tuned[0][k] - merged[k] for k in tuned[0]}
    ref = masked(u, keep)
    for k in out:
        assert torch.allclose(out[k], merged[k] + ref[k], atol=1e-6)
    if keep == 100.0:
        assert all(torch.allclose(out[k], tuned[0][k], atol=1e-6) for k in out)


def test_shared_model_modes(base, tuned):
    pp = shared_model(base, tuned, "post-pruning")
    assert set(pp) == set(tuned[0]) and all(pp[k] is base[k] for k in pp)
    fft = shared_model(base, tuned, "peru-fft", merge="ties", params={"k": 50})
    ref = get_method("ties")(base, tuned, k=50)
    assert all(torch.equal(fft[k], ref[k]) for k in fft)
    with pytest.raises(PeruError, match="mode"):
        shared_model(base, tuned, "prune-everything")


@pytest.mark.parametrize("scope", ["global", "per-tensor"])
def test_sparse_reuse_sweep_and_parts(base, tuned, scope):
    reuse = SparseReuse(base, tuned[2], scope)
    keeps = [50.0, 1.0, 10.0]
    for (m, model), (m2, model2) in zip(reuse.sweep(keeps), ((m, reuse.model(m)) for m in keeps)):
        assert m == m2 and all(torch.equal(model[k], model2[k]) for k in model)
    part = reuse.task_part(10.0)
    ref = top_m(task_vector(tuned[2], {k: base[k] for k in tuned[2]}), 10.0, scope)
    assert np.array_equal(np.sort(part.indices), np.sort(ref.indices))
    buffered = [(m, {k: v.clone() for k, v in sd.items()}) for m, sd in reuse.sweep(keeps, reuse_buffer=True)]
    for m, sd in buffered:
        assert all(torch.equal(sd[k], reuse.model(m)[k]) for k in sd)


def test_peru_lora(tmp_path, base):
    fac = random_factors(9, LORA_TARGETS, r=3)
    ad = load_lora_adapter(write_adapter(tmp_path / "ad", fac, r=3, lora_alpha=6))
    reuse = LoraReuse(base, ad)
    for q in (0, 1, 2, 3, 8):
        model = reuse.model(q)
        assert set(model) == set(base)
        for k in ad:
            delta = (model[k] - base[k]).double()
            assert torch.linalg.matrix_rank(delta, atol=1e-4) == min(q, 3)
    full = peru_lora(base, ad, 3)
    for k in ad:
        assert torch.allclose(full[k], base[k] + ad[k].delta(), atol=1e-5)
    parts = reuse.task_part(2)
    assert all(p.rank == 2 and p.U.dtype == torch.float32 for p in parts.values())
    tensors, meta = lowrank_part(parts, torch.float32, 2)
    assert set(tensors) == {f"{k}.{n}" for k in ad for n in ("U", "S", "Vh")} and meta["rank"] == "2"
    assert reuse.kept_ranks(5) == {k: 3 for k in ad}  # q above the adapter's rank keeps what it has
    swept = dict(reuse.sweep([1, 2]))
    assert all(torch.equal(swept[1][k], reuse.model(1)[k]) for k in ad)


def test_reuse_on_partial_base_keys(base, tuned):
    out = post_pruning(base, tuned[0], 20.0)
    assert set(out) == {k for k in base if k.startswith(PREFIX)}
