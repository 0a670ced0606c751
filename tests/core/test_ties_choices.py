"""TIES's conventions as choice parameters of the registry entry (issue 9, item 2): through ``RunSpec`` and
``get_method("ties")`` (what the dashboard and the sweep run), every choice equals the reference conventions on data
with planted ties and an all-zero task vector; the defaults keep the spec keys and results unchanged.

References: FusionBench's and mergekit's TIES as re-implemented in ``test_merging_conventions.py`` (files and commits
named there), and below one stacked formula covering every combination of the four options (FusionBench's
``topk_values_mask`` / ``resolve_sign`` / ``disjoint_merge`` with each option substituted).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_merging_conventions import SHAPES, SMALL, equal, fb_ties, mk_ties, planted

from peru_core.cli import main
from peru_core.errors import PeruError
from peru_core.io import load_state_dict, save_state_dict
from peru_core.merging import get_method
from peru_core.merging.ties_conventions import PRESETS
from peru_core.spec import RunSpec

OPTIONS = {"trim_count": ("round", "int+1", "int"), "zero_sign": ("base", "majority", "plus"),
           "scope": ("global", "per-tensor"), "aggregate": ("mean", "sum")}


def ref_ties(base, fts, k, lam, trim_count, zero_sign, scope, aggregate):
    keys = list(fts[0])
    tv = torch.stack([torch.cat([(sd[x] - base[x]).reshape(-1) for x in keys]) for sd in fts])
    sizes = [base[x].numel() for x in keys]
    ends = list(itertools.accumulate(sizes))
    segments = [(0, tv.shape[1])] if scope == "global" else list(zip([0] + ends[:-1], ends))
    trimmed = torch.zeros_like(tv)
    for s, e in segments:
        seg, d = tv[:, s:e], e - s
        if trim_count == "int":  # exactly int(d k), ties to the lower position (a tensor at k >= 100 untouched)
            n = d if k >= 100 else int(d * (k / 100))
            order = torch.argsort(seg.abs(), dim=1, descending=True, stable=True)[:, :n]
            trimmed[:, s:e] = seg * torch.zeros_like(seg, dtype=torch.bool).scatter(1, order, True)
            continue
        n = math.floor(d * k / 100 + 0.5) if trim_count == "round" else min(d, int(d * (k / 100)) + 1)
        if n:
            kth = seg.abs().kthvalue(d - n + 1, dim=1, keepdim=True).values  # the n-th largest, ties kept
            trimmed[:, s:e] = seg * (seg.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    if zero_sign == "plus":
        sign[sign == 0] = 1
    elif zero_sign == "majority":
        sign[sign == 0] = torch.sign(sign.sum())
    if zero_sign == "base":
        agree = ((trimmed > 0) & (sign > 0)) | ((trimmed < 0) & (sign < 0))
    else:
        agree = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * agree
    merged = sel.sum(0) if aggregate == "sum" else sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1)
    out, off = {}, 0
    for x, m in zip(keys, sizes):
        out[x] = base[x] + lam * merged[off:off + m].view(base[x].shape)
        off += m
    return out


def via_registry(base, fts, k, lam, **choices):
    """What the UI and the sweep run: a spec (choices at their default are left out of its key), then the entry."""
    spec = RunSpec.make("merge", "full", "ties", {"k": k, "lam": lam, **choices})
    assert RunSpec.from_key(spec.key()) == spec
    return get_method("ties")(base, fts, device="cpu", **dict(spec.params))


COMBOS = [dict(zip(OPTIONS, c)) for c in itertools.product(*OPTIONS.values())]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c.values()))
@pytest.mark.parametrize("k", [0.0, 20.0, 37.5, 100.0])
def test_every_choice_combination_equals_the_reference(combo, k):
    for seed in range(2):
        shapes = SMALL if combo["trim_count"] == "int" else SHAPES
        base, fts = planted(shapes, seed)
        assert all(torch.equal(fts[-1][x], base[x]) for x in base)  # the all-zero task vector
        # lam a power of two: the fused default path (ties_merge) scales in another order, exactly only then
        equal(via_registry(base, fts, k, 0.5, **combo), ref_ties(base, fts, k, 0.5, **combo))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [20.0, 33.0, 50.0])  # mergekit refuses a density that keeps nothing
def test_tool_presets_through_the_registry_equal_the_tools(seed, k):
    base, fts = planted(SHAPES, seed)
    equal(via_registry(base, fts, k, 0.3, **PRESETS["fusionbench"]), fb_ties(base, fts, k, 0.3, "sum"))
    equal(via_registry(base, fts, k, 1.0, **PRESETS["ties-paper"]), fb_ties(base, fts, k, 1.0, "mean"))
    small_base, small_fts = planted(SMALL, seed)
    equal(via_registry(small_base, small_fts, k, 0.7, **PRESETS["mergekit"]), mk_ties(small_base, small_fts, k, 0.7))


def test_defaults_keep_keys_and_results():
    base, fts = planted(SHAPES, 1)
    default = RunSpec.make("merge", "full", "ties", {"k": 20, "lam": 1.0})
    explicit = RunSpec.make("merge", "full", "ties", {"k": 20, "lam": 1.0, **PRESETS["peru"]})
    assert default == explicit and default.key() == (
        '{"keep": null, "merge": "ties", "mode": "merge", "params": [["k", 20.0], ["lam", 1.0]], "rank": null, '
        '"scope": "global", "source": "full"}')  # the key stored before the choices existed
    other = RunSpec.make("merge", "full", "ties", {"k": 20, "zero_sign": "fusionbench"})  # a tool's name: alias
    assert ("zero_sign", "majority") in other.params and "zero_sign=majority" in other.label
    equal(via_registry(base, fts, 20.0, 1.0), ref_ties(base, fts, 20.0, 1.0, **PRESETS["peru"]))


def test_bad_choice_is_one_sentence():
    with pytest.raises(PeruError, match=r"trim_count='ceil' is not one of its choices.*round, int\+1, int"):
        RunSpec.make("merge", "full", "ties", {"trim_count": "ceil"})


def test_cli_merge_takes_the_choices(tmp_path, capsys):
    base, fts = planted(SHAPES, 2)
    save_state_dict(base, tmp_path / "base.safetensors")
    paths = [str(save_state_dict(ft, tmp_path / f"t{i}.safetensors")) for i, ft in enumerate(fts)]
    out = tmp_path / "m.safetensors"
    args = ["merge", "--base", str(tmp_path / "base.safetensors"), "--finetuned", *paths, "--method", "ties",
            "--param", "k=20", "--param", "lam=0.3", "--param", "trim_count=fusionbench", "--param",
            "zero_sign=majority", "--param", "aggregate=sum", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    read = [load_state_dict(p) for p in paths]  # as the CLI read them (a file's key order)
    ref = fb_ties(load_state_dict(tmp_path / "base.safetensors"), read, 20.0, 0.3, "sum")
    equal(load_state_dict(out), ref)
    assert main([*args, "--param", "scope=nope"]) == 2
    assert "not one of its choices" in capsys.readouterr().err
