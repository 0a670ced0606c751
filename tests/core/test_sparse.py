"""Top-m% selection: exact counts, both scopes, ties, sweeps equal to single selections, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from peru_core.errors import PeruError
from peru_core.sparse import SparseDelta, TopM, check_keep, keep_count, kth_largest_abs, top_m
from peru_core.statedict import Layout, flatten, task_vector

KEEPS = [0.0, 0.5, 1.0, 5.0, 10.0, 33.3, 50.0, 99.0, 100.0]


def reference_top(x: np.ndarray, k: int) -> np.ndarray:
    """Straightforward: stable sort by decreasing |x| (ties: lower index first), take k positions."""
    return np.sort(np.argsort(-np.abs(x), kind="stable")[:k])


@pytest.fixture
def vec(base, finetuned):
    return task_vector(finetuned[0], base)


def test_keep_count():
    assert keep_count(1000, 10) == 100 and keep_count(1000, 0) == 0 and keep_count(1000, 100) == 1000
    assert keep_count(10, 15) == 2 and keep_count(10, 14.9) == 1 and keep_count(3, 50) == 2
    for bad in (-1, 100.5, float("nan"), "x"):
        with pytest.raises(PeruError, match="keep"):
            check_keep(bad)


@pytest.mark.parametrize("keep", KEEPS)
def test_global_scope_matches_reference(vec, keep):
    x = flatten(vec).numpy()
    part = top_m(vec, keep, "global")
    k = keep_count(x.size, keep)
    assert part.nnz == k and len(np.unique(part.indices)) == k
    assert np.array_equal(np.sort(part.indices), reference_top(x, k))
    assert np.array_equal(part.values, x[part.indices])


@pytest.mark.parametrize("keep", KEEPS)
def test_per_tensor_scope_matches_reference(vec, keep):
    part = top_m(vec, keep, "per-tensor")
    layout = Layout.of(vec)
    idx = np.sort(part.indices)
    for key, s, e in layout.spans():
        x = vec[key].reshape(-1).numpy()
        mine = idx[(idx >= s) & (idx < e)] - s
        assert np.array_equal(mine, reference_top(x, keep_count(x.size, keep))), key
    assert part.nnz == sum(keep_count(t.numel(), keep) for t in vec.values())


def test_ties_keep_exactly_k_lowest_index_first():
    x = {"a": torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0]), "b": torch.tensor([3.0, -3.0, 2.0])}
    part = top_m(x, 37.5, "global")  # k = 3 of 8, five entries tie at |3|
    assert part.nnz == 3 and sorted(part.indices.tolist()) == [1, 2, 3]
    part = top_m(x, 62.5, "global")  # k = 5: all five 3s
    assert sorted(part.indices.tolist()) == [1, 2, 3, 5, 6]


@pytest.mark.parametrize("scope", ["global", "per-tensor"])
def test_sweep_equals_single_selections(vec, scope):
    sel = TopM.of(vec, scope)
    swept = dict(sel.sweep([1.0, 20.0, 5.0, 100.0, 0.0]))
    for m, part in swept.items():
        single = top_m(vec, m, scope)
        assert np.array_equal(np.sort(part.indices), np.sort(single.indices)), m
    # a larger m than prepared re-prepares transparently
    assert sel.select(60.0).nnz == top_m(vec, 60.0, scope).nnz


def test_apply_and_dense(base, finetuned, vec):
    part = top_m(vec, 10.0)
    dense = part.to_state_dict()
    for k in vec:
        kept = dense[k] != 0
        assert torch.equal(dense[k][kept], vec[k][kept])
    model = part.apply(base)
    for k in vec:
        assert torch.allclose(model[k], base[k] + dense[k])
    assert set(model) == set(vec)
    full = top_m(vec, 100.0).apply(base)
    for k in vec:
        assert torch.allclose(full[k], finetuned[0][k], atol=1e-6)
    none = top_m(vec, 0.0).apply(base)
    assert all(torch.equal(none[k], base[k]) for k in vec)


def test_apply_into_reused_buffer(base, vec):
    buf = torch.empty(Layout.of(vec).size)
    a = top_m(vec, 10.0).apply(base, out=buf)
    assert a["visual.conv1.weight"].data_ptr() == buf.data_ptr()


def test_save_and_load_part(tmp_path, vec):
    from peru_core.io import load_metadata, load_state_dict, save_state_dict

    part = top_m(vec, 2.0, "per-tensor")
    tensors, meta = part.to_tensors()
    assert tensors["indices"].dtype == torch.int32 and meta["encoding"] == "indices"
    p = save_state_dict(tensors, tmp_path / "part.safetensors", meta)
    back = SparseDelta.from_tensors(load_state_dict(p), load_metadata(p))
    assert back.keep == 2.0 and back.scope == "per-tensor" and back.layout == part.layout
    for k, v in part.to_state_dict().items():
        assert torch.equal(back.to_state_dict()[k], v)
    with pytest.raises(PeruError, match="sparse task part"):
        SparseDelta.from_tensors({"x": torch.zeros(1)}, {})


def test_kth_largest_abs_and_scope_check(vec):
    x = flatten(vec).numpy()
    assert kth_largest_abs(x, 1) == np.abs(x).max()
    assert kth_largest_abs(x, x.size) == np.abs(x).min()
    with pytest.raises(PeruError, match="scope"):
        top_m(vec, 5, "per-row")


def test_bfloat16_values_stored_in_checkpoint_dtype(base):
    v = {k: t.to(torch.bfloat16) for k, t in base.items()}
    part = top_m(v, 1.0)  # few enough values that int32 indices beat the bitmask
    assert part.values.dtype == np.float32  # selection in float32 (exact for bfloat16)
    tensors, _ = part.to_tensors()
    assert tensors["values"].dtype == torch.bfloat16
    order = np.argsort(part.indices)
    assert torch.equal(tensors["values"].float(), torch.from_numpy(part.values[order]))  # bf16 -> f32 is exact
    assert torch.equal(tensors["indices"].long(), torch.from_numpy(part.indices[order]))
