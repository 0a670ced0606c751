"""Merges against straightforward reference code, the TIES zero-sign convention, and the registry table."""
from __future__ import annotations

import pytest
import torch

from conftest import PREFIX, finetune, random_sd
from peru_core.errors import PeruError
from peru_core.merging import get_method, list_methods
from peru_core.merging._reference import naive_ties
from peru_core.merging.ties import ties_merge


def test_average_is_mean(base, finetuned):
    out = get_method("average")(base, finetuned)
    for k in base:
        assert torch.allclose(out[k], torch.stack([sd[k] for sd in finetuned]).mean(0), atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_task_arithmetic_formula(base, finetuned, lam):
    out = get_method("task_arithmetic")(base, finetuned, lam=lam)
    for k in base:
        ref = base[k] + lam * sum(sd[k] - base[k] for sd in finetuned)
        assert torch.allclose(out[k], ref, atol=1e-6)
    assert all(out[k].data_ptr() != base[k].data_ptr() for k in base)  # inputs untouched


def test_merges_on_partial_checkpoints(base, tuned):
    out = get_method("task_arithmetic")(base, tuned, lam=0.5)
    assert set(out) == {k for k in base if k.startswith(PREFIX)}


@pytest.mark.parametrize("k", [0.0, 10.0, 20.0, 55.5, 100.0])
@pytest.mark.parametrize("lam", [0.7, 1.0])
def test_ties_matches_naive_reference(base, finetuned, k, lam):
    out = get_method("ties")(base, finetuned, k=k, lam=lam)
    ref = naive_ties(base, finetuned, k, lam)
    for key in base:
        assert torch.allclose(out[key], ref[key], atol=1e-6), key


def test_ties_zero_sign_convention():
    """Where the trimmed values cancel exactly the elected sign is 0 and the merged entry is 0 (base kept)."""
    base = {"w": torch.zeros(4)}
    ft = [{"w": torch.tensor([1.0, 2.0, -3.0, 0.5])}, {"w": torch.tensor([-1.0, 2.0, 1.0, -0.5])}]
    out = ties_merge(base, ft, k=100.0, lam=1.0)["w"]
    # entry 0: +1 and -1 cancel -> 0; entry 1: both +2 -> 2; entry 2: sum -2 -> mean of negatives -3;
    # entry 3: cancel -> 0
    assert torch.equal(out, torch.tensor([0.0, 2.0, -3.0, 0.0]))
    ref = naive_ties(base, ft, 100.0, 1.0)["w"]
    assert torch.equal(out, ref)


def test_ties_trim_keeps_top_k_per_task():
    base = {"w": torch.zeros(10)}
    v = torch.arange(1.0, 11.0)
    out = ties_merge(base, [{"w": v}], k=30.0, lam=1.0)["w"]  # one task: merged = its trimmed vector
    assert torch.equal(out, torch.where(v >= 8, v, torch.zeros(10)))


def test_ties_bfloat16_keeps_dtype():
    base = random_sd(5, dtype=torch.bfloat16)
    fts = [finetune(base, t) for t in range(2)]
    out = get_method("ties")(base, fts, k=20, lam=1.0)
    assert all(out[k].dtype == torch.bfloat16 for k in out)


def test_param_ranges_are_checked(base, finetuned):
    with pytest.raises(PeruError, match="out of range"):
        get_method("ties")(base, finetuned, k=150)
    with pytest.raises(PeruError, match="no parameter"):
        get_method("task_arithmetic")(base, finetuned, alpha=1)
    with pytest.raises(PeruError, match="Unknown merge method"):
        get_method("nope")
    with pytest.raises(PeruError, match="No fine-tuned"):
        get_method("average")(base, [])


def test_inconsistent_inputs_refused(base, finetuned):
    bad = dict(finetuned[1])
    bad["visual.ln_post.weight"] = torch.zeros(5)
    with pytest.raises(PeruError, match="shape"):
        get_method("average")(base, [finetuned[0], bad])


@pytest.mark.parametrize("method", [m for m in list_methods() if not m.needs], ids=lambda m: m.name)
def test_every_method_shapes_dtypes_finite(method, base, tuned):
    """Every registered method without ``needs`` (future ones too): keys, shapes, dtypes, finite values."""
    assert method.label and method.paper.startswith("http")
    for p in method.params:
        if p.is_choice:  # a selectbox: its default is one of its options, each with a label
            assert p.default in p.choices and p.help and all(p.choice_label(c) for c in p.choices)
        else:
            assert p.low <= p.default <= p.high and p.help
    out = method(base, tuned, **method.defaults())
    assert set(out) == set(tuned[0])
    for k, v in out.items():
        assert v.shape == base[k].shape and v.dtype == base[k].dtype
        assert torch.isfinite(v).all()
    one = method(base, tuned[:1], **method.defaults())
    assert set(one) == set(tuned[0])
