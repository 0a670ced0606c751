"""Table 6: at q = r both truncations equal the full product; Eckart-Young: truncating the product never has a larger
error than truncating each factor."""
from __future__ import annotations

import numpy as np
import torch

from peru_core.factor_truncation import (FACTORS, PRODUCT, factor_model, product_truncation, relative_errors,
                                         truncate_factors)
from peru_core.io import LoraAdapter, LoraFactors


def _adapter(seed=0, r=6):
    g = torch.Generator().manual_seed(seed)
    # graded factors, so truncation at q < r loses something different for each variant
    d = torch.logspace(0, -2, r)
    return LoraAdapter("t", {"x": LoraFactors(torch.randn(r, 12, generator=g) * d[:, None],
                                              torch.randn(10, r, generator=g), 0.7),
                             "y": LoraFactors(torch.randn(r, 9, generator=g), torch.randn(14, r, generator=g), 2.0)})


def _dense_error(ad, variant, q):
    err2 = norm2 = 0.0
    for f in ad.values():
        full = f.delta(torch.float64)
        if variant == FACTORS:
            b, a = truncate_factors(f, q)
            approx = f.scale * b @ a
        else:
            approx = product_truncation(f, q).dense(torch.float64)
        err2 += float(((full - approx) ** 2).sum())
        norm2 += float((full ** 2).sum())
    return np.sqrt(err2 / norm2)


def test_at_full_rank_both_equal_the_product():
    ad = _adapter()
    for f in ad.values():
        b, a = truncate_factors(f, 6)
        full = f.delta(torch.float64)
        torch.testing.assert_close(f.scale * b @ a, full, atol=1e-10, rtol=0)
        torch.testing.assert_close(product_truncation(f, 6).dense(torch.float64), full, atol=1e-10, rtol=0)
    errs = relative_errors(ad, [6])
    assert (errs["error"] < 1e-6).all()


def test_eckart_young_and_errors_match_dense_formula():
    ad = _adapter(1)
    errs = relative_errors(ad, range(1, 7)).set_index(["rank", "variant"])["error"]
    for q in range(1, 7):
        assert errs[(q, PRODUCT)] <= errs[(q, FACTORS)] + 1e-9
        for v in (PRODUCT, FACTORS):
            assert abs(errs[(q, v)] - _dense_error(ad, v, q)) < 1e-6
    assert errs[(2, PRODUCT)] < errs[(2, FACTORS)] - 1e-3  # strictly better on this case


def test_factor_model_adds_the_truncated_update():
    ad = _adapter(2)
    base = {"x": torch.zeros(10, 12), "y": torch.ones(14, 9), "z": torch.ones(3)}
    sd = factor_model(base, ad, 2)
    b, a = truncate_factors(ad["x"], 2)
    torch.testing.assert_close(sd["x"], (0.7 * b @ a).float())
    assert sd["z"] is base["z"]
