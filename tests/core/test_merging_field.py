"""The rest of the field against compact re-implementations of its reference code, on the same random state dicts.

References (read through the project's mirror; each re-implementation below keeps the reference's own operations
and order, and names its file):
  FB = tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689
  MK = arcee-ai/mergekit @ a6e402884ba9bc30da7f23e8304a35f19485de95
  LN = wang-kee/LiNeS @ 43a7bdd564a16195b164abc2c64ec1856c59c211
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import finetune, flat, random_sd, unflat
from peru_core.merging import get_method
from peru_core.merging.dare import dare_ties_merge

# matrices of several aspect ratios (the spectral merges), a conv kernel, biases and norms (averaged), three blocks
SHAPES = {
    "visual.conv1.weight": (6, 3, 2, 2),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (18, 6),
    "visual.transformer.resblocks.0.attn.in_proj_bias": (18,),
    "visual.transformer.resblocks.1.mlp.c_fc.weight": (12, 6),
    "visual.transformer.resblocks.1.mlp.c_proj.weight": (6, 12),
    "visual.transformer.resblocks.2.ln_1.weight": (6,),
    "visual.transformer.resblocks.2.mlp.c_fc.weight": (9, 9),
    "visual.proj": (6, 4),
}


@pytest.fixture(params=[2, 3, 4], ids=lambda n: f"T{n}")
def zoo(request):
    base = random_sd(7, SHAPES)
    return base, [finetune(base, 10 + t, scale=0.05 * (t + 1)) for t in range(request.param)]


def tvs_of(base, fts):
    return [{k: sd[k] - base[k] for k in sd} for sd in fts]


def close(out, ref, atol=1e-6):
    assert set(out) == set(ref)
    for k in ref:
        assert torch.allclose(out[k], ref[k], atol=atol, rtol=1e-5), (k, (out[k] - ref[k]).abs().max())


# --- DARE: FB fusion_bench/method/dare/{utils.py::param_random_drop_, task_arithmetic.py, ties_merging.py} ---------

def fb_dare_drop(tvs, p, seed):
    torch.manual_seed(seed)  # FB draws from the global generator, model by model, parameter by parameter
    out = []
    for tv in tvs:
        tv = {k: v.clone() for k, v in tv.items()}
        for k in tv:
            mask = torch.rand_like(tv[k]) > p
            tv[k] = tv[k] * mask / (1 - p)
        out.append(tv)
    return out


@pytest.mark.parametrize("p", [30.0, 50.0, 90.0])
def test_dare_task_arithmetic_equals_fusionbench(zoo, p):
    base, fts = zoo
    dropped = fb_dare_drop(tvs_of(base, fts), p / 100, seed=5)
    ref = {}
    for k in base:
        total = torch.zeros_like(base[k])
        for tv in dropped:
            total += tv[k]
        ref[k] = base[k] + total * 0.4
    out = get_method("dare_task_arithmetic")(base, fts, p=p, lam=0.4, seed=5)
    for k in ref:
        assert torch.equal(out[k], ref[k]), k  # the same draws and the same operations: bit for bit
    assert not torch.equal(out["visual.proj"], get_method("dare_task_arithmetic")(base, fts, p=p, lam=0.4,
                                                                                  seed=6)["visual.proj"])


def fb_ties(tv_flat, k_percent, merge_func):
    """FB fusion_bench/method/ties_merging/ties_merging_utils.py::ties_merging (topk_values_mask, resolve_sign,
    disjoint_merge)."""
    n, d = tv_flat.shape
    kk = d - int(d * (k_percent / 100))
    kth = tv_flat.abs().kthvalue(kk, dim=1, keepdim=True).values
    v = tv_flat * (tv_flat.abs() >= kth)
    sign = torch.sign(v.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    sel = v * torch.where(sign.unsqueeze(0) > 0, v > 0, v < 0)
    if merge_func == "sum":
        return sel.sum(0)
    return sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1)



def test_dare_ties_equals_fusionbench(zoo):
    """FB's DareTiesMerging (its TIES conventions: int(dK) + 1, majority zero sign, disjoint sum)."""
    base, fts = zoo
    keys = sorted(base)  # FB flattens in sorted key order
    dropped = fb_dare_drop(tvs_of(base, fts), 0.5, seed=3)
    merged = fb_ties(torch.vstack([flat(tv, keys) for tv in dropped]), 20, "sum")
    ref = unflat(flat(base, keys) + 0.5 * merged, base, keys)
    out = dare_ties_merge(base, fts, 0.5, 20.0, 0.5, 3, device="cpu", trim_count="int+1", zero_sign="majority",
                          aggregate="sum")
    close(out, ref)


# --- Breadcrumbs: MK mergekit/sparsify.py::magnitude_outliers + generalized_task_arithmetic.py (breadcrumbs) ---------

def mk_magnitude_outliers(tensor, density, gamma):
    if density >= 1:
        return tensor
    num = tensor.numel()
    target_n, n_top = int(density * num), int(gamma * num)
    n_bot = num - target_n - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    indices = torch.sort(tensor.abs().view(-1).float(), descending=False).indices
    mask = torch.zeros_like(tensor)
    mask.view(-1)[indices[n_bot:-n_top]] = 1
    return tensor * mask


@pytest.mark.parametrize("keep,top", [(30.0, 10.0), (50.0, 20.0), (90.0, 20.0)])
def test_breadcrumbs_equals_mergekit(zoo, keep, top):
    base, fts = zoo
    tvs = tvs_of(base, fts)
    ref = {}
    for k in base:  # weights 1, no normalisation, no rescale, lambda
        if int(top / 100 * base[k].numel()) == 0:
            continue  # mergekit's indices[n_bot:-0] keeps nothing there (ours keeps the n_keep largest)
        mixed = torch.stack([mk_magnitude_outliers(tv[k], keep / 100, top / 100) for tv in tvs]).sum(0)
        ref[k] = base[k] + mixed * 0.7
    out = get_method("breadcrumbs")(base, fts, keep=keep, top=top, lam=0.7)
    close({k: out[k] for k in ref}, ref)


def test_breadcrumbs_counts():
    base = {"w": torch.zeros(100)}
    v = torch.randperm(100).float() + 1.0
    out = get_method("breadcrumbs")(base, [{"w": v}], keep=10.0, top=5.0, lam=1.0)["w"]
    kept = v[out != 0]
    assert kept.numel() == 10 and kept.min() == 86 and kept.max() == 95  # 5 outliers dropped, the next 10 kept


# --- MagMax: FB fusion_bench/method/magmax/magmax.py::_magmax_select ----------------------------------------------

def test_magmax_equals_fusionbench(zoo):
    base, fts = zoo
    tvs = tvs_of(base, fts)
    tvs[-1]["visual.proj"] = -tvs[0]["visual.proj"]  # planted ties of magnitude: the later task must win
    fts = [{k: base[k] + tv[k] for k in tv} for tv in tvs]
    tvs = tvs_of(base, fts)
    merged = {k: v.clone() for k, v in tvs[0].items()}
    for tv in tvs[1:]:
        for k, cur in tv.items():
            merged[k] = torch.where(cur.abs() >= merged[k].abs(), cur, merged[k])
    ref = {k: base[k] + 0.5 * merged[k] for k in base}
    out = get_method("magmax")(base, fts, lam=0.5)
    for k in ref:
        assert torch.equal(out[k], ref[k]), k


# --- Model Stock: FB fusion_bench/method/model_stock/model_stock.py (compute_angle, compute_ratio, run) -------------

def fb_model_stock(base, fts):
    eps = 1e-8
    n = len(fts)
    angles = {}
    for i in range(n):
        for j in range(i + 1, n):
            for key in base:
                v1, v2 = (fts[i][key] - base[key]).float(), (fts[j][key] - base[key]).float()
                cos = torch.sum(v1 * v2) / (math.sqrt(torch.sum(v1 ** 2) * torch.sum(v2 ** 2)) + eps)
                cos = torch.clamp(cos, min=-1.0, max=1.0)
                angles.setdefault(key, []).append(np.rad2deg(torch.acos(cos).item()))
    out = {}
    for key in base:
        angle = np.deg2rad(sum(angles[key]) / len(angles[key]))
        r = n * np.cos(angle) / ((n - 1) * np.cos(angle) + 1 + eps)
        avg = torch.zeros_like(fts[0][key])
        for sd in fts:
            avg += sd[key]
        avg /= n
        out[key] = avg * r + base[key] * (1.0 - r)
    return out


def test_model_stock_equals_fusionbench(zoo):
    base, fts = zoo
    fts[0]["visual.proj"] = base["visual.proj"].clone()  # a zero task vector: cosine 0, 90 degrees
    close(get_method("model_stock")(base, fts), fb_model_stock(base, fts), atol=2e-6)


def test_model_stock_one_task_is_that_task(zoo):
    base, fts = zoo
    close(get_method("model_stock")(base, fts[:1]), fts[0])


# --- LiNeS: LN src/eval/eval.py::LiNeS_scaling with the multi-task alpha (src/eval/aggregation.py) ------------------

def ln_lines(base, fts, beta, num_blocks):
    tvs = tvs_of(base, fts)
    merged = {k: sum(tv[k] for tv in tvs) for k in base}  # "sum": the Task Arithmetic task vector
    norm_mtv = sum(v.abs().sum() for v in merged.values())
    alpha = float(norm_mtv / norm_mtv) / len(fts)  # norm_summed_tvs / norm_mtv / T, the same vector here
    scale = {}
    for k in merged:
        for layer, block in enumerate(f".{i}." for i in range(num_blocks)):
            if block in k:
                scale[k] = alpha + beta * (layer / (num_blocks - 1))
                break
    return {k: base[k] + merged[k] * scale.get(k, alpha) for k in base}


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.3])
def test_lines_equals_authors_code(zoo, beta):
    base, fts = zoo
    close(get_method("lines")(base, fts, beta=beta), ln_lines(base, fts, beta, num_blocks=3))


# --- Consensus: FB fusion_bench/method/tall_mask/utils.py (generate_task_masks, construct_consensus_mask) -----------

def fb_consensus(base, fts, lam, mask_lambda, k):
    keys = sorted(base)
    flat_ptm = flat(base, keys)
    flat_ft = torch.vstack([flat(sd, keys) for sd in fts])
    tv = (flat_ft - flat_ptm).sum(0)
    flat_multi = flat_ptm + tv
    masks = (flat_ptm - flat_ft).abs() > (flat_multi - flat_ft).abs() * mask_lambda
    consensus = masks.float().sum(0) >= k
    return unflat(flat_ptm + lam * (tv * consensus), base, keys)


@pytest.mark.parametrize("mask_lambda,k", [(0.4, 2), (0.2, 1), (0.6, 3), (0.5, 0)])
def test_consensus_equals_fusionbench(zoo, mask_lambda, k):
    base, fts = zoo
    close(get_method("consensus")(base, fts, lam=0.3, mask_lambda=mask_lambda, k=k),
          fb_consensus(base, fts, 0.3, mask_lambda, k))


def test_consensus_k0_is_task_arithmetic(zoo):
    base, fts = zoo
    close(get_method("consensus")(base, fts, lam=0.3, mask_lambda=0.4, k=0),
          get_method("task_arithmetic")(base, fts, lam=0.3))


# --- TSV-M: FB fusion_bench/method/task_singular_vector/utils/TSVM_utils.py::compute_and_sum_svd_mem_reduction -------

def fb_tsvm(base, fts, alpha):
    tvs = tvs_of(base, fts)
    n = len(tvs)
    new = {}
    for key in tvs[0]:
        for i, tv in enumerate(tvs):
            vec = tv[key]
            if vec.dim() == 2:
                u, s, vh = torch.linalg.svd(vec, full_matrices=False)
                if i == 0:
                    sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
                r = int(s.shape[0] * (1 / n))
                sum_u[:, i * r:(i + 1) * r] = u[:, :r]
                sum_s[i * r:(i + 1) * r] = s[:r]
                sum_vh[i * r:(i + 1) * r, :] = vh[:r, :]
            elif i == 0:
                new[key] = vec.clone()
            else:
                new[key] += (vec - new[key]) / (i + 1)
        if tvs[0][key].dim() == 2:
            u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
            u_vh, _, vh_vh = torch.linalg.svd(sum_vh, full_matrices=False)
            new[key] = torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_vh, vh_vh))
    return {k: base[k] + alpha * new[k] for k in base}


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_tsv_m_equals_fusionbench(zoo, alpha):
    base, fts = zoo
    close(get_method("tsv_m")(base, fts, alpha=alpha, device="cpu"), fb_tsvm(base, fts, alpha), atol=2e-6)


# --- Iso-C / Iso-CTS: FB fusion_bench/method/isotropic_merging/iso_utils.py (iso_c, iso_cts) ------------------------

def fb_iso_c(base, fts, lam):
    tvs = tvs_of(base, fts)
    new = {}
    for key in tvs[0]:
        new[key] = sum(tv[key] for tv in tvs) / len(tvs)
        if tvs[0][key].dim() == 2:
            new[key] *= len(tvs)
            u, s, v = torch.linalg.svd(new[key], full_matrices=False)
            new[key] = torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), v))
    return {k: base[k] + new[k] * lam for k in base}


def fb_iso_cts(base, fts, lam, frac):
    tvs = tvs_of(base, fts)
    n = len(tvs)
    new = {}
    for key in tvs[0]:
        shape = tvs[0][key].shape
        if len(shape) != 2:
            for i, tv in enumerate(tvs):
                new[key] = tv[key].clone() if i == 0 else new[key] + (tv[key] - new[key]) / (i + 1)
            continue
        c = int(min(shape) * frac)
        c = min(shape) - round((min(shape) - c) / n) * n
        u, s, v = torch.linalg.svd(sum(tv[key] for tv in tvs), full_matrices=False)
        cu, cs, cv = u[:, :c], s[:c], v[:c, :]
        per = int((min(shape) - c) / n)
        for i, tv in enumerate(tvs):
            w = tv[key]
            ut, st, vt = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)
            if i == 0:
                bu, bs, bv = torch.zeros_like(ut), torch.zeros_like(st), torch.zeros_like(vt)
            bu[:, i * per:(i + 1) * per], bs[i * per:(i + 1) * per], bv[i * per:(i + 1) * per, :] = \
                ut[:, :per], st[:per], vt[:per, :]
        bu[:, n * per:n * per + c], bs[n * per:n * per + c], bv[n * per:n * per + c, :] = cu, cs, cv
        a, _, b = torch.linalg.svd(bu, full_matrices=False)
        bu = a @ b
        a, _, b = torch.linalg.svd(bv, full_matrices=False)
        bv = a @ b
        new[key] = torch.linalg.multi_dot((bu, torch.diag(torch.ones_like(bs) * bs.mean()), bv))
    return {k: base[k] + new[k] * lam for k in base}


def test_iso_c_equals_fusionbench(zoo):
    base, fts = zoo
    close(get_method("iso_c")(base, fts, lam=1.3, device="cpu"), fb_iso_c(base, fts, 1.3), atol=2e-6)


@pytest.mark.parametrize("common", [80.0, 50.0, 100.0])
def test_iso_cts_equals_fusionbench(zoo, common):
    base, fts = zoo
    close(get_method("iso_cts")(base, fts, lam=1.0, common=common, device="cpu"),
          fb_iso_cts(base, fts, 1.0, common / 100), atol=2e-6)


def test_iso_c_spectrum_is_flat(zoo):
    base, fts = zoo
    out = get_method("iso_c")(base, fts, lam=1.0, device="cpu")
    key = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    s = torch.linalg.svdvals(out[key] - base[key])
    assert torch.allclose(s, s.mean().expand_as(s), atol=1e-5)


# --- the compute device gives the CPU's result (runs where a GPU is present) ------------------------------------

GPU = [d for d in ("cuda",) if torch.cuda.is_available()]


@pytest.mark.skipif(not GPU, reason="no CUDA device on this machine")
@pytest.mark.parametrize("name,params,atol", [
    ("tsv_m", {"alpha": 1.0}, 1e-4), ("iso_c", {"lam": 1.0}, 1e-4), ("iso_cts", {"lam": 1.0, "common": 50.0}, 1e-4),
    ("model_stock", {}, 1e-5), ("breadcrumbs", {"keep": 30.0, "top": 10.0, "lam": 0.7}, 0.0),
    ("dare_ties", {"p": 50.0, "k": 20.0, "lam": 1.0, "seed": 1}, 1e-6)])
def test_device_matches_cpu(zoo, name, params, atol):
    base, fts = zoo
    cpu = get_method(name)(base, fts, device="cpu", **params)
    dev = get_method(name)(base, fts, device=GPU[0], **params)
    for k in cpu:
        assert dev[k].device.type == "cpu" and dev[k].dtype == cpu[k].dtype
        assert torch.allclose(dev[k], cpu[k], atol=atol, rtol=0 if atol == 0 else 1e-4), k
