"""TALL masks and EMR-Merging (issue 9, item 1): equal to FusionBench on random state dicts with planted ties and an
all-zero task vector; their bytes are the sizes of the files written (dashboard downloads and the CLI).

Reference (read through the project's mirror; the re-implementations below keep its operations and their order):
  FB = tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689
  fusion_bench/method/tall_mask/utils.py::generate_task_masks (the authors' TALL code) with the retrieval of
  method/tall_mask/task_arithmetic.py (theta_0 + mask o tau_MTL); fusion_bench/method/emr_merging/utils.py::emr_merge
  and EMRTaskModulator.apply (theta_0 + tau_uni o mask * rescaler).
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import PREFIX, flat, random_sd, unflat
from peru_core import experiments as ex
from peru_core.cli import main
from peru_core.errors import PeruError
from peru_core.io import load_state_dict
from peru_core.partreuse import PART_METHODS, emr_merging, get_part_method, tall_masks
from peru_core.spec import MODE_LABELS, PART_MODES, RunSpec
from peru_core.statedict import numel
from peru_core.taskpart import read_task_part

SHAPES = {
    "visual.conv1.weight": (6, 3, 2, 2),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (18, 6),
    "visual.transformer.resblocks.0.attn.in_proj_bias": (18,),
    "visual.transformer.resblocks.1.mlp.c_fc.weight": (12, 6),
    "visual.transformer.resblocks.2.ln_1.weight": (6,),
    "visual.proj": (6, 4),
}
PLANT = "visual.transformer.resblocks.0.attn.in_proj_weight"


def _zoo(T: int, zero_task: bool):
    """Random fine-tunes with planted dyadic patterns (exact in float32) at the first rows of PLANT: equal magnitudes
    across tasks, sums that cancel to exactly 0 (EMR's zero elected sign) and |tau_t| = |tau_MTL - tau_t| (the TALL
    mask's tie); optionally an all-zero task vector (a fine-tune equal to the base)."""
    base = random_sd(3, SHAPES)
    base[PLANT][:4] = 1.0
    fts = []
    for t in range(T):
        g = torch.Generator().manual_seed(50 + t)
        ft = {k: v + 0.05 * (t + 1) * torch.randn(v.shape, generator=g) for k, v in base.items()}
        ft[PLANT][0] = 1.0 + (0.25 if t < 2 else 0.0)  # tie for tasks 0, 1: |0.25| vs |0.5 - 0.25| (lam = 1)
        ft[PLANT][1] = 1.0 + (0.5 if t % 2 == 0 else -0.5) * (t < 2)  # sum 0 over tasks 0, 1 (the rest: 0)
        ft[PLANT][2] = 1.0 + 0.125 * (1 if t % 2 == 0 else -1)  # equal magnitudes, alternating signs
        ft[PLANT][3] = 1.0  # no task moves
        fts.append(ft)
    if zero_task:
        fts.append({k: v.clone() for k, v in base.items()})
    return base, fts


@pytest.fixture(params=[(2, False), (3, False), (3, True), (4, True)], ids=lambda p: f"T{p[0]}{'+zero' * p[1]}")
def zoo(request):
    return _zoo(*request.param)


# --- FB: method/tall_mask/utils.py::generate_task_masks + retrieval -----------------------------------------------
def fb_tall(base, fts, lam, tall_mask_lambda):
    keys = list(base)
    flat_ptm = flat(base, keys)
    tv_flat_checks = torch.stack([flat(ft, keys) - flat_ptm for ft in fts])
    tv = tv_flat_checks.sum(0) * lam  # the multi-task vector passed as ``tv`` (Task Arithmetic's; FB's class: lam 1)
    flat_multi = flat_ptm + tv
    models, masks = [], []
    for ft in fts:
        flat_ft = flat(ft, keys)
        diff_pt_ft = (flat_ptm - flat_ft).abs()
        diff_multi_ft = (flat_multi - flat_ft).abs()
        mask = diff_pt_ft > diff_multi_ft * tall_mask_lambda
        masks.append(mask)
        models.append(unflat(flat_ptm + mask.float() * tv, base, keys))
    return models, masks


# --- FB: method/emr_merging/utils.py::emr_merge + EMRTaskModulator.apply ------------------------------------------
def fb_emr(base, fts):
    tvs = [{k: ft[k] - base[k] for k in base} for ft in fts]
    summed = {k: torch.zeros_like(tvs[0][k]) for k in tvs[0]}
    for tv in tvs:
        for k in summed:
            summed[k] += tv[k]
    flag_dict = {k: (v > 0) * 2 - 1 for k, v in summed.items()}
    num_tasks = len(tvs)
    vector_unified, masks, scales = {}, {}, torch.zeros(num_tasks)
    for n, flag in flag_dict.items():
        masks[n] = []
        param_max = torch.zeros_like(tvs[0][n])
        for m in range(num_tasks):
            param = tvs[m][n]
            mask = (param * flag) > 0
            masks[n].append(mask)
            param_abs = torch.abs(mask * param)
            param_max = torch.where(param_abs > param_max, param_abs, param_max)
            scales[m] += torch.mean(torch.abs(param))
        vector_unified[n] = param_max * flag
    new_scales = torch.zeros(num_tasks)
    for m in range(num_tasks):
        for n in vector_unified:
            p = vector_unified[n] * masks[n][m]
            new_scales[m] += torch.mean(torch.abs(p))
    rescalers = scales / new_scales
    models = [{n: base[n] + vector_unified[n] * masks[n][m] * rescalers[m] for n in base} for m in range(num_tasks)]
    return models, [torch.cat([masks[n][m].reshape(-1) for n in base]) for m in range(num_tasks)], rescalers


def _equal(out, ref):
    for k in ref:
        assert torch.allclose(out[k], ref[k], atol=1e-6, rtol=1e-6), (k, (out[k] - ref[k]).abs().max())


@pytest.mark.parametrize("lam, tall_mask_lambda", [(1.0, 0.6), (1.0, 1.0), (0.3, 0.4), (0.7, 0.0)])
def test_tall_masks_equal_fusionbench(zoo, lam, tall_mask_lambda):
    base, fts = zoo
    parts = tall_masks(base, fts, lam=lam, tall_mask_lambda=tall_mask_lambda)
    ref_models, ref_masks = fb_tall(base, fts, lam, tall_mask_lambda)
    for t in range(len(fts)):
        assert torch.equal(parts.mask(t), ref_masks[t]), t
        _equal(parts.model(base, t), ref_models[t])
        assert parts.kept(t) == int(ref_masks[t].sum())
        assert parts.rescalers[t] == 1.0
    if lam == 1.0 and tall_mask_lambda == 1.0:  # the planted tie is not kept: a strict '>' (the paper writes '>=')
        i = list(base).index(PLANT)
        off = sum(base[k].numel() for k in list(base)[:i])
        assert not parts.mask(0)[off] and not parts.mask(1)[off]
    if len(fts) > 3 or torch.equal(fts[-1][PLANT], base[PLANT]):  # the all-zero task keeps nothing
        assert parts.kept(len(fts) - 1) == 0 and all(torch.equal(v, base[k]) for k, v in
                                                      parts.model(base, len(fts) - 1).items())


def test_emr_equals_fusionbench(zoo):
    base, fts = zoo
    parts = emr_merging(base, fts)
    ref_models, ref_masks, ref_rescalers = fb_emr(base, fts)
    zero = [t for t, ft in enumerate(fts) if all(torch.equal(ft[k], base[k]) for k in base)]
    for t in range(len(fts)):
        assert torch.equal(parts.mask(t), ref_masks[t]), t
        if t in zero:  # FB divides 0 by 0 (a NaN model); here the rescaler is 0 and the task is served theta_0
            assert torch.isnan(ref_rescalers[t]) and parts.rescalers[t] == 0.0 and parts.kept(t) == 0
            assert all(torch.equal(v, base[k]) for k, v in parts.model(base, t).items())
            continue
        assert parts.rescalers[t] == pytest.approx(float(ref_rescalers[t]), rel=1e-6)
        _equal(parts.model(base, t), ref_models[t])
    # the zero elected sign (a sum of exactly 0) is -1: the task that moved down at that entry keeps it
    off = sum(base[k].numel() for k in list(base)[:list(base).index(PLANT)]) + 1 * SHAPES[PLANT][1]
    assert not parts.mask(0)[off] and parts.mask(1)[off] and parts.vector[off] == -0.5


def test_emr_matches_the_formula_on_a_hand_example():
    """tau_1 = [1, -2, 0], tau_2 = [3, 1, -1]: sign(sum) = [+, -, -], tau_uni = [3, -2, -1]."""
    base = {"w": torch.zeros(3)}
    fts = [{"w": torch.tensor([1.0, -2.0, 0.0])}, {"w": torch.tensor([3.0, 1.0, -1.0])}]
    parts = emr_merging(base, fts)
    assert parts.vector.tolist() == [3.0, -2.0, -1.0]
    assert parts.mask(0).tolist() == [True, True, False] and parts.mask(1).tolist() == [True, False, True]
    # sum|tau_t| / sum|M_t o tau_uni| (one tensor): (1 + 2 + 0) / (3 + 2 + 0) and (3 + 1 + 1) / (3 + 0 + 1)
    assert parts.rescalers == pytest.approx((3 / 5, 5 / 4))


def test_registry_specs_and_errors():
    assert {m.value for m in PART_MODES} == set(PART_METHODS)
    for m in PART_MODES:
        spec = RunSpec.make(m)
        assert RunSpec.from_key(spec.key()) == spec and spec.method_label == MODE_LABELS[m]
        assert spec.merge is None and spec.keep is None and spec.rank is None
    tall = RunSpec.make("tall", "lora", params={"lam": 0.5})
    assert tall.params == (("lam", 0.5), ("tall_mask_lambda", 0.6)) and tall.method_label == "TALL masks [LoRA]"
    assert RunSpec.make("peru-fft", "full", "task_arithmetic", keep=10).key() == (
        '{"keep": 10.0, "merge": "task_arithmetic", "mode": "peru-fft", "params": [["lam", 0.3]], "rank": null, '
        '"scope": "global", "source": "full"}')  # existing keys unchanged
    with pytest.raises(PeruError, match="no parameter 'k'"):
        RunSpec.make("tall", params={"k": 1})
    with pytest.raises(PeruError, match="out of range"):
        RunSpec.make("tall", params={"tall_mask_lambda": -1})
    with pytest.raises(PeruError, match="no parameter"):
        RunSpec.make("emr", params={"lam": 1})
    with pytest.raises(PeruError, match="Unknown reuse method"):
        get_part_method("nope")
    assert get_part_method("tall").task_params(100) == 4 and get_part_method("emr").task_params(64) == 3


# --- bytes: the dashboard's downloads and the CLI ------------------------------------------------------------------
SPECS = [RunSpec.make("tall"), RunSpec.make("tall", params={"lam": 0.3, "tall_mask_lambda": 0.2}),
         RunSpec.make("emr"), RunSpec.make("tall", "lora"), RunSpec.make("emr", "llora")]


@pytest.mark.parametrize("which", ["rt", "rt16"])
def test_downloads_are_the_reported_bytes_and_rebuild_the_models(request, tmp_path, which):
    rt = request.getfixturevalue(which)
    names, d = rt.zoo.task_names, numel(rt.base_state())
    for spec in SPECS:
        costs, files = ex._costs(rt, spec), ex.artifacts(rt, spec)
        for n, b in files.items():
            (tmp_path / n).write_bytes(b)
        size = {n: os.path.getsize(tmp_path / n) for n in files}
        assert size.pop("shared_model.safetensors") + size.pop("shared_vector.safetensors") == costs.shared_bytes
        assert size == {f"{t}.{spec.mode.value}.safetensors": b for t, b in zip(names, costs.task_bytes)}
        assert sum(os.path.getsize(tmp_path / n) for n in files) == costs.total_bytes
        method = get_part_method(spec.mode.value)
        assert costs.shared_params == 2 * d and costs.task_params == (method.task_params(d),) * len(names)
        assert min(costs.task_bytes) >= math.ceil(d / 8)  # the bitmask itself
        shared = load_state_dict(tmp_path / "shared_model.safetensors")
        vector = load_state_dict(tmp_path / "shared_vector.safetensors")
        if which == "rt16":  # written in the stored dtype
            assert all(v.dtype == torch.float16 for v in (*shared.values(), *vector.values()))
        for i, t in enumerate(names):
            part = read_task_part(tmp_path / f"{t}.{spec.mode.value}.safetensors")
            rebuilt, expect = part.apply(shared, vector), ex.task_model(rt, spec, i)
            atol = 1e-5 if which == "rt" else 2e-3  # float16 files round the shared model and vector
            assert all(torch.allclose(rebuilt[k].float(), expect[k].float(), atol=atol) for k in expect), spec.label
        with pytest.raises(PeruError, match="shared task vector"):
            part.apply(shared)


def test_the_task_models_are_the_method_on_the_zoo(rt):
    """task_model is the registry method on theta_0 and the zoo's fine-tunes (LoRA: folded B A)."""
    base = rt.base_state()
    for spec in SPECS:
        fts = ex.source_models(rt, spec.source)
        parts = get_part_method(spec.mode.value)(base, fts, **dict(spec.params))
        for i in range(len(fts)):
            got = ex.task_model(rt, spec, i)
            assert all(torch.equal(got[k], v) for k, v in parts.model(base, i).items())


@pytest.mark.parametrize("mode, params", [("tall", ["--param", "lam=0.5", "--param", "tall_mask_lambda=0.3"]),
                                          ("emr", [])])
def test_cli_reuse_writes_the_parts_it_reports(tmp_path, capsys, base, tuned, mode, params):
    from peru_core.io import save_state_dict

    save_state_dict(base, tmp_path / "base.safetensors")
    paths = [save_state_dict(t, tmp_path / f"task{i}.safetensors") for i, t in enumerate(tuned)]
    out = tmp_path / "out"
    assert main(["reuse", "--base", str(tmp_path / "base.safetensors"), "--finetuned", *map(str, paths), "--mode",
                 mode, *params, "--prefix", PREFIX, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    acc = report["accounting"]
    assert acc["shared_bytes"] == os.path.getsize(out / report["shared"]) + os.path.getsize(
        out / report["shared_vector"])
    assert acc["task_bytes"] == [os.path.getsize(out / t["part"]) for t in report["tasks"]]
    shared, vector = load_state_dict(out / report["shared"]), load_state_dict(out / report["shared_vector"])
    # the fine-tunes as the CLI reads them: a file's key order (sorted) sets EMR's order of summing per-tensor means
    read = [load_state_dict(p) for p in paths]
    parts = get_part_method(mode)({k: base[k] for k in read[0]}, read, **dict(p.split("=") for p in params[1::2]))
    for i, t in enumerate(report["tasks"]):
        model = load_state_dict(out / t["output"])
        assert all(torch.equal(model[k], v) for k, v in parts.model(shared, i).items())
        assert t["kept"] == parts.kept(i)
        rebuilt = read_task_part(out / t["part"]).apply(shared, vector)
        assert all(torch.allclose(rebuilt[k], model[k], atol=1e-6) for k in rebuilt)
    capsys.readouterr()
    assert main(["reuse", "--base", str(tmp_path / "base.safetensors"), "--finetuned", *map(str, paths), "--mode",
                 mode, "--keep", "10", "--out", str(tmp_path / "o2")]) == 2  # main prints a PeruError, exits 2
    assert "drop --keep" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_cli_sparse_modes_still_need_keep(tmp_path, capsys, base, tuned):
    from peru_core.io import save_state_dict

    save_state_dict(base, tmp_path / "base.safetensors")
    paths = [save_state_dict(t, tmp_path / f"task{i}.safetensors") for i, t in enumerate(tuned)]
    assert main(["reuse", "--base", str(tmp_path / "base.safetensors"), "--finetuned", *map(str, paths), "--mode",
                 "post-pruning", "--out", str(tmp_path / "o")]) == 2
    assert "needs --keep" in capsys.readouterr().err
