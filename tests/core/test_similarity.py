"""Task-vector cosines against a direct numpy formula and against what task_vectors / FusionBench users compute
(``torch.nn.functional.cosine_similarity`` on flattened vectors); for LoRA, products vs stacked factors."""
from __future__ import annotations

import numpy as np
import torch

from peru_core.io import LoraAdapter, LoraFactors
from peru_core.similarity import adapter_grams, lora_cosines, task_vector_cosines, task_vector_grams


def _zoo(seed=0, T=3):
    g = torch.Generator().manual_seed(seed)
    base = {"a.weight": torch.randn(7, 5, generator=g), "a.bias": torch.randn(7, generator=g),
            "b.weight": torch.randn(3, 7, generator=g)}
    fts = {f"t{i}": {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(T)}
    return base, fts


def _flat(base, ft):
    return np.concatenate([(ft[k].double() - base[k].double()).numpy().ravel() for k in base])


def test_flattened_cosines_equal_numpy_and_torch_reference():
    base, fts = _zoo()
    names, m = task_vector_cosines(base, fts)
    vs = [_flat(base, fts[n]) for n in names]
    direct = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in vs] for a in vs])
    # FusionBench's TaskVectorCosSimilarity: flattened float32 difference, then float64, F.cosine_similarity(dim=0)
    tv = [torch.cat([(fts[n][k] - base[k]).reshape(-1) for k in base]).double() for n in names]
    ref = np.array([[torch.nn.functional.cosine_similarity(a, b, dim=0).item() for b in tv] for a in tv])
    assert names == ["t0", "t1", "t2"]
    np.testing.assert_allclose(m, direct, atol=1e-12)
    np.testing.assert_allclose(m, ref, atol=1e-6)


def test_per_layer_cosines_use_each_tensor_alone():
    base, fts = _zoo(1)
    g = task_vector_grams(base, list(fts.values()))
    per = g.per_layer()
    for i, k in enumerate(g.keys):
        vs = [(ft[k].double() - base[k].double()).numpy().ravel() for ft in fts.values()]
        direct = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in vs] for a in vs])
        np.testing.assert_allclose(per[i], direct, atol=1e-12)
    assert g.names == ("task 1", "task 2", "task 3")


def _adapter(name, g, keys, r=3, scale=0.5):
    return LoraAdapter(name, {k: LoraFactors(torch.randn(r, i, generator=g), torch.randn(o, r, generator=g), scale)
                              for k, (o, i) in keys.items()})


def test_lora_cosines_are_those_of_the_folded_products_not_of_the_factors():
    g = torch.Generator().manual_seed(2)
    keys = {"x.weight": (8, 6), "y.weight": (5, 8)}
    a1 = _adapter("one", g, keys)
    # the same updates factorised differently: B M, M^-1 A (M invertible), and a second task
    m = torch.randn(3, 3, generator=g) + 3 * torch.eye(3)
    a1b = LoraAdapter("one-refactored", {k: LoraFactors(torch.linalg.solve(m, f.A), f.B @ m, f.scale)
                                         for k, f in a1.items()})
    a2 = _adapter("two", g, keys)
    names, prod = lora_cosines({"one": a1, "one-refactored": a1b, "two": a2})
    folded = [np.concatenate([f.delta(torch.float64).numpy().ravel() for f in a.values()]) for a in (a1, a1b, a2)]
    direct = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in folded] for a in folded])
    np.testing.assert_allclose(prod, direct, atol=1e-10)
    assert np.isclose(prod[0, 1], 1.0)  # same update, so cosine 1
    stacked = [np.concatenate([np.concatenate([f.A.numpy().ravel(), f.B.numpy().ravel()]) for f in a.values()])
               for a in (a1, a1b, a2)]
    factor_cos = stacked[0] @ stacked[1] / np.linalg.norm(stacked[0]) / np.linalg.norm(stacked[1])
    assert factor_cos < 0.99  # the factor-based matrix differs from the product-based one on this case


def test_adapter_gram_treats_a_missing_target_as_zero():
    g = torch.Generator().manual_seed(3)
    a1 = _adapter("one", g, {"x.weight": (8, 6), "y.weight": (5, 8)})
    a2 = _adapter("two", g, {"x.weight": (8, 6)})
    gr = adapter_grams([a1, a2])
    assert np.isnan(gr.cosines("y.weight")[0, 1])
    f1 = np.concatenate([a1["x.weight"].delta(torch.float64).numpy().ravel(),
                         a1["y.weight"].delta(torch.float64).numpy().ravel()])
    f2 = np.concatenate([a2["x.weight"].delta(torch.float64).numpy().ravel(), np.zeros(40)])
    assert np.isclose(gr.cosines()[0, 1], f1 @ f2 / np.linalg.norm(f1) / np.linalg.norm(f2))
