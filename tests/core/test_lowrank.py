"""QR-core SVD of LoRA products against dense SVDs; truncation ranks; spectra."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LORA_TARGETS, random_factors, write_adapter
from peru_core.errors import PeruError
from peru_core.io import load_lora_adapter
from peru_core.lowrank import (apply_lowrank, lora_spectra, product_svd, task_vector_spectra, truncate_adapter,
                               adapter_svd)


@pytest.mark.parametrize("out_dim, in_dim, r", [(12, 7, 3), (5, 9, 4), (6, 6, 6), (3, 8, 5)])
def test_singular_values_match_dense_svd(out_dim, in_dim, r):
    g = torch.Generator().manual_seed(out_dim * 100 + in_dim)
    A, B = torch.randn(r, in_dim, generator=g), torch.randn(out_dim, r, generator=g)
    lr = product_svd(A, B, 0.75)
    dense = 0.75 * B.double() @ A.double()
    ref = torch.linalg.svdvals(dense)
    n = lr.rank
    assert n == min(r, out_dim, in_dim)
    assert torch.allclose(lr.S, ref[:n], rtol=1e-10, atol=1e-10)
    assert torch.allclose(ref[n:], torch.zeros_like(ref[n:]), atol=1e-10)  # nothing beyond the LoRA rank
    assert torch.allclose(lr.dense(torch.float64), dense, atol=1e-10)
    assert torch.allclose(lr.U.T @ lr.U, torch.eye(n, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(lr.Vh @ lr.Vh.T, torch.eye(n, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("q", [0, 1, 2, 3, 10])
def test_truncation_rank_and_eckart_young(q):
    g = torch.Generator().manual_seed(7)
    A, B = torch.randn(4, 9, generator=g), torch.randn(11, 4, generator=g)
    lr = product_svd(A, B).truncate(q)
    assert lr.rank == min(q, 4)
    dense = lr.dense(torch.float64)
    assert torch.linalg.matrix_rank(dense) == min(q, 4)
    U, S, Vh = torch.linalg.svd(B.double() @ A.double(), full_matrices=False)
    best = (U[:, :q] * S[:q]) @ Vh[:q]
    assert torch.allclose(dense, best, atol=1e-9)
    assert lr.params == min(q, 4) * (11 + 9 + 1)
    with pytest.raises(PeruError, match="negative"):
        lr.truncate(-1)


def test_badly_conditioned_factors_float64():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(8, 200, generator=g) * torch.logspace(0, -6, 8).unsqueeze(1)
    B = torch.randn(300, 8, generator=g)
    S = product_svd(A, B).S
    ref = torch.linalg.svdvals(B.double() @ A.double())[:8]
    assert torch.allclose(S, ref, rtol=1e-6)


def test_adapter_spectra_and_apply(tmp_path, base):
    ad = load_lora_adapter(write_adapter(tmp_path / "ad", random_factors(1, LORA_TARGETS), r=2, lora_alpha=3))
    spectra = lora_spectra(ad)
    assert set(spectra) == set(ad)
    for k, s in spectra.items():
        ref = torch.linalg.svdvals(ad[k].delta(torch.float64)).numpy()
        assert np.allclose(s, ref[: s.size], atol=1e-10) and s.size == 2
    svds = adapter_svd(ad)
    full = apply_lowrank(base, truncate_adapter(svds, 2))
    for k in base:
        expect = base[k] + ad[k].delta() if k in ad else base[k]
        assert torch.allclose(full[k], expect, atol=1e-5)
    untouched = [k for k in base if k not in ad]
    assert all(full[k] is base[k] for k in untouched)  # shared, not copied


def test_task_vector_spectra(base, finetuned):
    spectra = task_vector_spectra(base, finetuned[0])
    assert set(spectra) == {k for k, v in base.items() if v.dim() == 2}
    for k, s in spectra.items():
        ref = torch.linalg.svdvals(finetuned[0][k].double() - base[k].double()).numpy()
        assert np.allclose(s, ref, atol=1e-5)
        assert np.all(np.diff(s) <= 0)
