"""Other tools' TIES and top-m% conventions, as options, equal to those tools' code on data with planted ties.

Every task vector here is a multiple of 0.5 on a base of multiples of 0.25, so magnitudes tie and signed sums
cancel exactly (no rounding breaks a tie), and one task vector is all zero. References (re-implemented compactly,
same operations and order):
  FB = tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689,
       fusion_bench/method/ties_merging/ties_merging_utils.py (topk_values_mask, resolve_sign, disjoint_merge),
       the TIES authors' code as FusionBench carries it
  MK = arcee-ai/mergekit @ a6e402884ba9bc30da7f23e8304a35f19485de95,
       mergekit/sparsify.py::magnitude and merge_methods/generalized_task_arithmetic.py (GTATask, get_mask)
"""
from __future__ import annotations

import pytest
import torch
from conftest import flat, unflat

from peru_core.errors import PeruError
from peru_core.merging._reference import naive_ties
from peru_core.merging.ties import ties_merge
from peru_core.merging.ties_conventions import DEFAULT, PRESETS, ties_merge_convention
from peru_core.reuse import peru_fft, post_pruning
from peru_core.sparse import top_m

SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 4), "c.scale": (3,), "d.weight": (5, 3)}
SMALL = {"a.weight": (4, 4), "a.bias": (5,), "b.weight": (2, 3), "c.scale": (16,)}  # <= 16 entries each


def planted(shapes, seed=0, tasks=4):
    """Base of quarter-integers; task vectors of half-integers in [-1.5, 1.5] (ties everywhere), the last all zero."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randint(-8, 9, s, generator=g).float() * 0.25 for k, s in shapes.items()}
    tvs = [{k: torch.randint(-3, 4, s, generator=g).float() * 0.5 for k, s in shapes.items()}
           for _ in range(tasks - 1)]
    tvs.append({k: torch.zeros(s) for k, s in shapes.items()})
    return base, [{k: base[k] + tv[k] for k in base} for tv in tvs]



def fb_topk_values_mask(m, k_percent):
    """FB topk_values_mask: keep |M| >= the (d - int(d K))-th smallest, per row."""
    d = m.shape[1]
    kth = m.abs().kthvalue(d - int(d * (k_percent / 100)), dim=1, keepdim=True).values
    return m * (m.abs() >= kth)


def fb_ties(base, fts, k, lam, merge_func):
    keys = sorted(base)
    tv = torch.vstack([flat(sd, keys) for sd in fts]) - flat(base, keys)
    v = fb_topk_values_mask(tv, k)
    sign = torch.sign(v.sum(0))  # resolve_sign: majority rule for zeros
    sign[sign == 0] = torch.sign(sign.sum())
    sel = v * torch.where(sign.unsqueeze(0) > 0, v > 0, v < 0)  # disjoint_merge
    merged = sel.sum(0) if merge_func == "sum" else sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1)
    return unflat(flat(base, keys) + lam * merged, base, keys)


def mk_magnitude(t, density):
    if density >= 1:
        return t
    k = int(density * t.numel())
    assert k > 0
    mask = torch.zeros_like(t)
    mask.view(-1)[torch.argsort(t.abs().view(-1).float(), descending=True)[:k]] = 1
    return t * mask


def mk_ties(base, fts, k, lam):
    out = {}
    for key in base:
        deltas = torch.stack([mk_magnitude(sd[key] - base[key], k / 100) for sd in fts])
        weights = torch.ones(len(fts)).view(-1, *[1] * base[key].dim())
        wd = deltas * weights
        majority = (wd.sum(0) >= 0).float() * 2 - 1  # get_mask(method="sum")
        mask = (wd.sign() == majority).float()
        mixed = (wd * mask).sum(0)
        divisor = (weights * mask).sum(0)
        divisor[divisor == 0] = 1
        mixed /= divisor  # normalize (the ties default)
        if lam != 1:
            mixed *= lam
        out[key] = base[key] + mixed
    return out


def equal(out, ref):
    assert set(out) == set(ref)
    for k in ref:
        assert torch.equal(out[k], ref[k]), (k, out[k], ref[k])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [0.0, 7.0, 20.0, 33.0, 50.0, 99.0])
@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_fusionbench_ties_exactly(seed, k, agg):
    base, fts = planted(SHAPES, seed)
    out = ties_merge(base, fts, k, 0.3, device="cpu", **{**PRESETS["fusionbench"], "aggregate": agg})
    equal(out, fb_ties(base, fts, k, 0.3, agg))


def test_fusionbench_ties_on_random_dicts():
    g = torch.Generator().manual_seed(3)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    out = ties_merge(base, fts, 20.0, 0.3, device="cpu", **PRESETS["fusionbench"])
    ref = fb_ties(base, fts, 20.0, 0.3, "sum")
    for key in ref:
        assert torch.allclose(out[key], ref[key], atol=1e-6)


def test_majority_zero_sign_when_the_majority_is_zero_too():
    """Elected signs +, -, 0 sum to 0: the reference then merges the negative entries of the zero-sign entry."""
    base = {"w": torch.zeros(3)}
    fts = [{"w": torch.tensor([2.0, -2.0, 1.0])}, {"w": torch.tensor([0.0, 0.0, -1.0])}]
    out = ties_merge(base, fts, 100.0, 1.0, device="cpu", trim_count="int+1", zero_sign="majority")["w"]
    assert torch.equal(out, torch.tensor([2.0, -2.0, -1.0]))
    ours = ties_merge(base, fts, 100.0, 1.0, device="cpu")["w"]
    assert torch.equal(ours, torch.tensor([2.0, -2.0, 0.0]))  # ours keeps the base
    plus = ties_merge(base, fts, 100.0, 1.0, device="cpu", zero_sign="plus")["w"]
    assert torch.equal(plus, torch.tensor([2.0, -2.0, 1.0]))  # mergekit elects '+'


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [20.0, 40.0, 75.0, 100.0])
def test_mergekit_ties_exactly(seed, k):
    """Ties of magnitude at the cut are broken by position; mergekit's argsort does the same up to 16 entries (an
    insertion sort; beyond, torch's unstable sort orders equal values arbitrarily, so no rule reproduces it)."""
    base, fts = planted(SMALL, seed)
    equal(ties_merge(base, fts, k, 0.7, device="cpu", **PRESETS["mergekit"]), mk_ties(base, fts, k, 0.7))


def test_mergekit_ties_on_random_dicts():
    g = torch.Generator().manual_seed(4)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    out = ties_merge(base, fts, 40.0, 1.0, device="cpu", **PRESETS["mergekit"])
    ref = mk_ties(base, fts, 40.0, 1.0)
    for key in ref:
        assert torch.allclose(out[key], ref[key], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [0.0, 20.0, 55.5, 100.0])
def test_convention_path_with_our_options_equals_the_fused_default(seed, k):
    base, fts = planted(SHAPES, seed)
    equal(ties_merge_convention(base, fts, k, 1.0, device="cpu", **DEFAULT), ties_merge(base, fts, k, 1.0))
    equal(ties_merge(base, fts, k, 1.0, device="cpu"), naive_ties(base, fts, k, 1.0))


def test_each_option_changes_the_result():
    base, fts = planted(SHAPES, 1)
    ours = ties_merge(base, fts, 20.0, 1.0, device="cpu")
    for option, value in [("trim_count", "int+1"), ("trim_count", "int"), ("zero_sign", "majority"),
                          ("zero_sign", "plus"), ("scope", "per-tensor"), ("aggregate", "sum")]:
        other = ties_merge(base, fts, 20.0, 1.0, device="cpu", **{option: value})
        assert any(not torch.equal(ours[k], other[k]) for k in ours), (option, value)


def test_unknown_convention_is_one_sentence():
    base, fts = planted(SMALL)
    with pytest.raises(PeruError, match="zero_sign"):
        ties_merge(base, fts, 20.0, 1.0, zero_sign="minus")


# --- top-m% in Post-Pruning and PERU-FFT: count="int+1" is FB's topk_values_mask (the TIES authors' trim) ---------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [0.0, 1.0, 10.0, 25.0, 50.0, 100.0 - 1e-9])
def test_top_m_int_plus_one_equals_topk_values_mask(seed, m):
    base, fts = planted(SHAPES, seed)
    keys = list(base)
    for sd in fts:  # the last task vector is all zero
        tv = {k: sd[k] - base[k] for k in keys}
        ref = fb_topk_values_mask(flat(tv, keys).unsqueeze(0), m)[0]
        assert torch.equal(top_m(tv, m, count="int+1", device="cpu").to_flat(), ref)
        # per tensor: the same rule within each tensor
        per = torch.cat([fb_topk_values_mask(tv[k].reshape(1, -1), m)[0] for k in keys])
        assert torch.equal(top_m(tv, m, "per-tensor", count="int+1", device="cpu").to_flat(), per)


def test_post_pruning_and_peru_fft_take_the_convention():
    base, fts = planted(SHAPES, 2)
    keys = list(base)
    for shared, fn in ((base, post_pruning), (ties_merge(base, fts, 20.0, 1.0), peru_fft)):
        tv = {k: fts[0][k] - shared[k] for k in keys}
        ref = unflat(flat(shared, keys) + fb_topk_values_mask(flat(tv, keys).unsqueeze(0), 10.0)[0], base, keys)
        equal(fn(shared, fts[0], 10.0, count="int+1", device="cpu"), ref)
        ours = fn(shared, fts[0], 10.0, device="cpu")
        assert sum(int((ours[k] != shared[k]).sum()) for k in keys) == round(0.1 * flat(tv, keys).numel())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("preset", ["fusionbench", "mergekit"])
def test_conventions_on_the_gpu_equal_the_cpu(preset):
    base, fts = planted(SMALL, 1)
    equal(ties_merge(base, fts, 40.0, 0.7, device="cuda", **PRESETS[preset]),
          ties_merge(base, fts, 40.0, 0.7, device="cpu", **PRESETS[preset]))
