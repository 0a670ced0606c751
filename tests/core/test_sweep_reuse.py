"""Reuse across settings (issue 10): one top-m% preparation and one preallocated model per task, one QR-core SVD
per LoRA product; every fast path gives exactly (bit for bit) the values of the straightforward one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from peru_core.io import LoraAdapter, LoraFactors
from peru_core.lowrank import apply_lowrank, truncate_adapter
from peru_core.reuse import LoraReuse, SparseReuse
from peru_core.sparse import TopM, _sorted_top, keep_count
from peru_core.statedict import Layout, ReusableBuffer, flatten, weighted_sum, work_dtype

KEEPS = [0.0, 0.01, 1.0, 5.0, 20.0, 37.5, 99.9, 100.0]


_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _same(a: dict, b: dict) -> bool:
    """Bit for bit (signs of zeros and NaNs included)."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(
        a[k].contiguous().view(_INT[a[k].dtype]), b[k].contiguous().view(_INT[b[k].dtype])) for k in a)


def _state(seed: int, ties: bool = False, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {"w": torch.randn(40, 30, generator=g), "b": torch.randn(30, generator=g), "e": torch.randn(3, generator=g)}
    if ties:  # planted ties, zeros and negative zeros: the threshold falls on a run of equal magnitudes
        sd = {k: (v * 4).round() / 4 for k, v in sd.items()}
        sd["w"][::3] = 0.0
        sd["b"][::5] = -0.0
    return {k: v.to(dtype) for k, v in sd.items()}


def test_sorted_top_is_the_stable_argsort_order():
    rng = np.random.default_rng(1)
    for trial in range(60):
        x = rng.standard_normal(int(rng.integers(1, 3000))).astype(np.float32)
        if trial % 2:
            x = np.round(x, 1).astype(np.float32)
            x[::7] = -0.0
        k = int(rng.integers(0, x.size + 1))
        pos, vals = _sorted_top(x, k)
        ref = np.argsort(-np.abs(x), kind="stable")[:k]
        assert np.array_equal(pos, ref)
        assert np.array_equal(vals.view(np.uint32), x[ref].view(np.uint32))  # signs of zeros too


@pytest.mark.parametrize("scope", ["global", "per-tensor"])
@pytest.mark.parametrize("ties", [False, True])
def test_streaming_apply_equals_scatter(scope, ties):
    shared, tuned = _state(1, ties), _state(2, ties)
    reuse = SparseReuse(shared, tuned, scope, device="cpu")
    for m in KEEPS:
        want = reuse.task_part(m).apply(shared)
        assert _same(reuse.model(m), want), m


def test_streaming_apply_other_dtypes():
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        shared, tuned = _state(3, True, dtype), _state(4, True, dtype)
        reuse = SparseReuse(shared, tuned, "global", device="cpu")
        for m in KEEPS:
            assert _same(reuse.model(m), reuse.task_part(m).apply(shared)), (dtype, m)


def test_int_plus_one_convention_still_applies():
    shared, tuned = _state(5, True), _state(6, True)
    reuse = SparseReuse(shared, tuned, device="cpu", count="int+1")
    for m in (0.0, 10.0, 100.0):
        assert _same(reuse.model(m), reuse.task_part(m).apply(shared))


def test_model_buffer_is_reused_only_once_released():
    shared, tuned = _state(7), _state(8)
    reuse = SparseReuse(shared, tuned, device="cpu")
    first = reuse.model(5.0)
    kept = {k: v.clone() for k, v in first.items()}
    second = reuse.model(20.0)  # `first` is still held: a new buffer, `first` unchanged
    assert first["w"].data_ptr() != second["w"].data_ptr()
    assert _same(first, kept)
    ptr = second["w"].data_ptr()
    del first, second
    third = reuse.model(1.0)  # nothing held: written into the same memory
    assert third["w"].data_ptr() == ptr
    assert _same(third, reuse.task_part(1.0).apply(shared))


def test_one_buffer_serves_every_task_of_a_size():
    shared = _state(9)
    a, b = SparseReuse(shared, _state(10), device="cpu"), SparseReuse(shared, _state(11), device="cpu")
    ptr = a.model(5.0)["w"].data_ptr()  # released at once
    assert b.model(5.0)["w"].data_ptr() == ptr


def test_numpy_view_counts_as_a_use():
    buf = ReusableBuffer(16)
    v = buf.get()
    arr = v.numpy()
    del v
    assert buf.get().data_ptr() != arr.ctypes.data  # the array still holds the first buffer


def test_sweep_prepares_once(monkeypatch):
    shared, tuned = _state(12), _state(13)
    reuse = SparseReuse(shared, tuned, device="cpu")
    calls = []
    real = reuse.selector.prepare
    monkeypatch.setattr(reuse.selector, "prepare", lambda m: (calls.append(m), real(m)))
    got = [(m, {k: v.clone() for k, v in sd.items()}) for m, sd in reuse.sweep([1.0, 20.0, 5.0, 100.0])]
    assert calls == [20.0]
    for m, sd in got:
        assert _same(sd, reuse.task_part(m).apply(shared))


def _adapter(seed: int, shapes: dict, r: int = 6) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    return LoraAdapter("t", {k: LoraFactors(torch.randn(r, s[1], generator=g), torch.randn(s[0], r, generator=g),
                                            0.5) for k, s in shapes.items()})


def test_lora_svd_once_per_task_and_model_equals_fresh(monkeypatch):
    import peru_core.lowrank as lowrank

    base = {"a.weight": torch.randn(12, 9), "b.weight": torch.randn(9, 12), "c": torch.randn(4)}
    ad = _adapter(1, {"a.weight": (12, 9), "b.weight": (9, 12)})
    qr_calls = []
    real_qr = torch.linalg.qr
    monkeypatch.setattr(lowrank.torch.linalg, "qr", lambda *a, **k: (qr_calls.append(1), real_qr(*a, **k))[1])
    reuse = LoraReuse(base, ad)
    n_qr = len(qr_calls)
    svds = dict(reuse.svds)
    models = {}
    for q in (1, 2, 4, 6, 3):
        sd = reuse.model(q)
        assert _same(sd, apply_lowrank(base, truncate_adapter(reuse.svds, q)))  # fresh tensors, same values
        models[q] = {k: v.clone() for k, v in sd.items()}
    assert len(qr_calls) == n_qr and all(reuse.svds[k] is svds[k] for k in svds)  # no QR or SVD per rank
    held = reuse.model(2)
    other = reuse.model(4)  # `held` is still held: it keeps its values
    assert _same(held, models[2]) and _same(other, models[4])


@pytest.mark.parametrize("threads", [1, 3])
def test_weighted_sum_flat_output_equals_per_key_pass(threads):
    """The same values whether the keys run one per worker thread (3) or in turn (1)."""
    base = {"w": torch.randn(300, 7), "h": torch.randn(50).half(), "b": torch.randn(1000), "d": torch.randn(9).double()}
    fts = [{k: v + 0.1 * torch.randn(v.shape).to(v.dtype) for k, v in base.items()} for _ in range(4)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = weighted_sum(base, fts, 1 - 0.3 * 4, 0.3, list(base))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert list(got) == list(base)
    for k, b in base.items():  # the same ops per key, one fresh output each
        wd = work_dtype(b.dtype)
        a = fts[0][k].reshape(-1).to(wd, copy=True)
        for f in fts[1:]:
            a.add_(f[k].reshape(-1))
        r = torch.mul(b.reshape(-1), 1 - 0.3 * 4)
        r.add_(a, alpha=0.3)
        assert got[k].dtype == b.dtype and torch.equal(got[k], r.view(b.shape).to(b.dtype)), k


def test_topm_apply_on_flat_layout_matches_formula():
    """shared + v where kept, shared elsewhere, with exactly keep_count entries changed."""
    shared, tuned = _state(14), _state(15)
    layout = Layout.of(tuned)
    diff = flatten(tuned, layout) - flatten(shared, layout)
    sel = TopM(diff, layout, device="cpu")
    out = flatten(sel.apply(shared, 10.0), layout)
    changed = int((out != flatten(shared, layout)).sum())
    assert changed == keep_count(layout.size, 10.0)


def test_apply_with_non_finite_vector_and_negative_zero_shared():
    shared = _state(16)
    layout = Layout.of(shared)
    vec = torch.randn(layout.size)
    vec[3], vec[10], vec[20] = float("inf"), float("nan"), -float("inf")
    shared["w"][0, :5] = -0.0
    sel = TopM(vec, layout, device="cpu")
    for m in (0.0, 1.0, 30.0, 100.0):
        assert _same(sel.apply(shared, m), sel.select(m).apply(shared)), m
    shared2 = _state(16)
    shared2["b"][:4] = -0.0
    sel2 = TopM(torch.randn(layout.size), layout, device="cpu")
    for m in (0.0, 5.0, 50.0):
        assert _same(sel2.apply(shared2, m), sel2.select(m).apply(shared2)), m
