"""Fisher merging and RegMean against reference computations; the zoo context's statistics against autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peru_core.errors import PeruError
from peru_core.merging import get_method
from peru_core.merging.fisher import fisher_merge
from peru_core.merging.regmean import regmean_merge, scale_off_diagonal
from peru_core.zoo.context import ZooContext, mha_context
from peru_core.zoo.manifest import load_zoo
from peru_core.zoo.runtime import ZooRuntime


def _linear_tasks(n_tasks: int = 3, out: int = 3, inp: int = 4, n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = [torch.randn(out, inp, generator=g, dtype=torch.float64) for _ in range(n_tasks)]
    X = [torch.randn(n, inp, generator=g, dtype=torch.float64) * (1 + t) for t in range(n_tasks)]
    sds = [{"lin.weight": w, "lin.bias": torch.full((out,), float(t), dtype=torch.float64)} for t, w in enumerate(W)]
    grams = [{"lin.weight": x.T @ x} for x in X]
    return W, X, sds, grams


def test_regmean_alpha_1_is_the_least_squares_fit_to_every_tasks_outputs():
    W, X, sds, grams = _linear_tasks()
    merged = regmean_merge(sds, grams, alpha=1.0)
    Xs = np.concatenate([x.numpy() for x in X])
    Ys = np.concatenate([(x @ w.T).numpy() for x, w in zip(X, W)])
    ref = np.linalg.lstsq(Xs, Ys, rcond=None)[0].T  # argmin_W sum_t ||X_t W^T - X_t W_t^T||^2
    np.testing.assert_allclose(merged["lin.weight"].numpy(), ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged["lin.bias"].numpy(), np.full(3, 1.0))  # other tensors: the mean


def test_regmean_scaled_off_diagonals_matches_the_closed_form():
    W, X, sds, grams = _linear_tasks(seed=1)
    a = 0.6
    Gs = [g["lin.weight"].numpy() for g in grams]
    Gp = [a * G + (1 - a) * np.diag(np.diag(G)) for G in Gs]
    ref = np.linalg.solve(sum(Gp), sum(G @ w.numpy().T for G, w in zip(Gp, W))).T
    np.testing.assert_allclose(regmean_merge(sds, grams, a)["lin.weight"].numpy(), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(scale_off_diagonal(grams[0]["lin.weight"], a), torch.from_numpy(Gp[0]))


def test_regmean_alpha_0_weights_each_input_column_by_its_diagonal():
    W, X, sds, grams = _linear_tasks(seed=2)
    d = [torch.diagonal(g["lin.weight"]) for g in grams]
    ref = sum(w * dt for w, dt in zip(W, d)) / sum(d)
    torch.testing.assert_close(regmean_merge(sds, grams, 0.0)["lin.weight"], ref)


def test_regmean_of_one_model_returns_it_and_float32_stays_float32():
    W, X, sds, grams = _linear_tasks(n_tasks=1)
    torch.testing.assert_close(regmean_merge(sds, grams, 0.95)["lin.weight"], W[0])
    sd32 = [{k: v.float() for k, v in sds[0].items()}]
    assert regmean_merge(sd32, [{"lin.weight": grams[0]["lin.weight"].float()}], 0.9)["lin.weight"].dtype == torch.float32
    with pytest.raises(PeruError, match="input size"):
        regmean_merge(sds, [{"lin.weight": torch.eye(3)}], 0.9)


def test_fisher_merge_matches_the_weighted_average():
    g = torch.Generator().manual_seed(0)
    thetas = [{"w": torch.randn(5, 4, generator=g), "b": torch.randn(4, generator=g)} for _ in range(3)]
    fishers = [{"w": torch.rand(5, 4, generator=g)} for _ in range(3)]
    fishers[0]["w"][0] = 0.0
    fishers[1]["w"][0] = 0.0
    fishers[2]["w"][0] = 0.0  # row 0: no information anywhere -> the plain mean
    merged = fisher_merge(thetas, fishers)
    num = sum(f["w"] * t["w"] for f, t in zip(fishers, thetas))
    den = sum(f["w"] for f in fishers)
    torch.testing.assert_close(merged["w"][1:], (num / den)[1:])
    torch.testing.assert_close(merged["w"][0], torch.stack([t["w"][0] for t in thetas]).mean(0))
    torch.testing.assert_close(merged["b"], torch.stack([t["b"] for t in thetas]).mean(0))  # no Fisher: mean
    equal = fisher_merge(thetas, [{"w": torch.ones(5, 4)}] * 3)
    torch.testing.assert_close(equal["w"], torch.stack([t["w"] for t in thetas]).mean(0))


# --- the zoo context on a tiny real zoo ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tiny_zoo_dir):
    return ZooContext(ZooRuntime(load_zoo(tiny_zoo_dir), "cpu"))


def test_grams_match_the_inputs_captured_by_hooks(ctx):
    rt = ctx.rt
    ft = rt.finetuned(0)
    grams = ctx.grams(0, ft, 8)
    block = "visual.transformer.resblocks.0"
    expected = {f"{block}.attn.in_proj_weight", f"{block}.attn.out_proj.weight", f"{block}.mlp.c_fc.weight",
                f"{block}.mlp.c_proj.weight"}
    assert expected <= set(grams)
    model = rt.load(ft)
    res = model.visual.transformer.resblocks[0]
    seen = {}
    hooks = [res.ln_1.register_forward_hook(lambda m, i, o: seen.__setitem__("ln_1", o)),
             res.ln_2.register_forward_hook(lambda m, i, o: seen.__setitem__("ln_2", o)),
             res.attn.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o[0]))]
    x, _ = rt.data(0, "validation")
    with torch.no_grad():
        model.encode_image(x[:8])
    for h in hooks:
        h.remove()
    for key, inp in ((f"{block}.attn.in_proj_weight", seen["ln_1"]), (f"{block}.mlp.c_fc.weight", seen["ln_2"])):
        flat = inp.reshape(-1, inp.shape[-1]).double()
        torch.testing.assert_close(grams[key], flat.T @ flat)
    # the recomputed attention context, pushed through out_proj, is the attention module's output
    with torch.no_grad():
        out = F.linear(mha_context(res.attn, seen["ln_1"]), res.attn.out_proj.weight, res.attn.out_proj.bias)
    torch.testing.assert_close(out, seen["attn"], rtol=1e-4, atol=1e-5)
    g = grams[f"{block}.attn.out_proj.weight"]
    assert torch.allclose(g, g.T) and torch.linalg.eigvalsh(g).min() > -1e-6


def test_fisher_matches_a_per_sample_autograd_loop(ctx):
    rt = ctx.rt
    ft = rt.finetuned(1)
    fisher = ctx.fisher(1, ft, 6)
    model = rt.load(ft)
    x, _ = rt.data(1, "validation")
    x = x[:6]
    y = ctx.sample_labels(1, x)
    head = rt.head(1).clone()
    params = {k: p for k, p in model.named_parameters() if k.startswith("visual.")}
    ref = {k: torch.zeros_like(p) for k, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    try:
        for i in range(len(x)):
            logp = F.log_softmax(F.normalize(model.encode_image(x[i:i + 1]), dim=-1) @ head.T, dim=-1)[0, y[i]]
            grads = torch.autograd.grad(logp, list(params.values()))
            for k, gr in zip(params, grads):
                ref[k] += gr.pow(2) / len(x)
    finally:
        for p in params.values():
            p.requires_grad_(False)
    assert set(fisher) == set(params)
    for k in params:
        torch.testing.assert_close(fisher[k], ref[k], rtol=1e-4, atol=1e-9)
    assert torch.equal(ctx.fisher(1, ft, 6)["visual.conv1.weight"], fisher["visual.conv1.weight"])  # cached


def test_fisher_and_regmean_merges_run_through_the_registry(ctx):
    rt = ctx.rt
    base, fts = rt.base_state(), [rt.finetuned(i) for i in range(2)]
    for name, params in (("fisher", {"samples": 16}), ("regmean", {"samples": 16, "alpha": 0.9})):
        method = get_method(name)
        assert method.needs and {p.name for p in method.params} == set(params)
        merged = method(base, fts, context=ctx, **params)
        assert set(merged) == set(base)
        assert all(torch.isfinite(v).all() and v.dtype == base[k].dtype for k, v in merged.items())
        assert 0.0 <= rt.accuracy(merged, 0) <= 1.0
        with pytest.raises(PeruError, match="needs a model"):
            method(base, fts, **params)
    with pytest.raises(PeruError, match="out of range"):
        get_method("regmean")(base, fts, context=ctx, alpha=1.5)
