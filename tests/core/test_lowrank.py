"""QR-core SVD of LoRA products against dense SVDs; truncation ranks; spectra."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import LORA_TARGETS, random_factors, write_adapter
from peru_core.errors import PeruError
from peru_core.io import load_lora_adapter
from peru_core.lowrank import (ProductSVD, adapter_svd, apply_lowrank, lora_spectra, product_svd,
                               task_vector_spectra, truncate_adapter)


@pytest.mark.parametrize("out_dim, in_dim, r", [(12, 7, 3), (5, 9, 4), (6, 6, 6), (3, 8, 5)])
def test_singular_values_match_dense_svd(out_dim, in_dim, r):
    g = torch.Generator().manual_seed(out_dim * 100 + in_dim)
    A, B = torch.randn(r, in_dim, generator=g), torch.randn(out_dim, r, generator=g)
    lr = product_svd(A, B, 0.75)  # float64 throughout
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


@pytest.mark.parametrize("qr_dtype, tol", [(torch.float64, 1e-9), (None, 1e-5)])
@pytest.mark.parametrize("case", ["zero-B", "repeated-columns", "zero-row-A"])
def test_rank_deficient_factors_fall_back_to_explicit_q(case, qr_dtype, tol):
    """PEFT initialises B to zero; repeated or zero columns make R singular: results stay exact."""
    g = torch.Generator().manual_seed(11)
    A, B = torch.randn(4, 9, generator=g), torch.randn(10, 4, generator=g)
    if case == "zero-B":
        B.zero_()
    elif case == "repeated-columns":
        B[:, 3] = B[:, 0]
    else:
        A[2] = 0.0
    dense = B.double() @ A.double()
    ref = torch.linalg.svdvals(dense)
    svd = ProductSVD(A, B, qr_dtype=qr_dtype)
    scale = float(ref[0]) or 1.0
    assert torch.allclose(svd.S, ref[:4], atol=tol * scale)
    for q in (1, 2, 4):
        U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
        if q < 4 and S[q - 1] - S[q] < 1e-3 * scale:
            continue  # the top-q subspace is not unique
        best = (U[:, :q] * S[:q]) @ Vh[:q]
        assert torch.allclose(svd.truncate(q).dense(torch.float64), best, atol=tol * scale * 10)
        t = svd.truncate(q)
        assert torch.isfinite(t.U).all() and torch.isfinite(t.Vh).all()


@pytest.mark.parametrize("out_dim, in_dim", [(300, 120), (120, 300)])
def test_fast_float32_qr_path(out_dim, in_dim):
    """The default for float32 factors: float32 QR, float64 core; singular values to 1e-6 of the largest."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(16, in_dim, generator=g) / in_dim ** 0.5
    B = torch.randn(out_dim, 4, generator=g) @ torch.randn(4, 16, generator=g) + 1e-3 * torch.randn(out_dim, 16,
                                                                                                    generator=g)
    dense = B.double() @ A.double()
    ref = torch.linalg.svdvals(dense)[:16]
    svd = ProductSVD(A, B)
    assert (svd.S - ref).abs().max() <= 1e-6 * ref[0]
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    for q in (1, 4, 8):
        best = (U[:, :q] * S[:q]) @ Vh[:q]
        assert (svd.truncate(q).dense(torch.float64) - best).abs().max() <= 1e-5 * ref[0]


@pytest.mark.parametrize("ratio", [1.0, 1e-2, 1e-3, 2e-4])
def test_eigh_core_agrees_with_the_svd_where_it_is_used(ratio):
    """The float32 path's core goes through eigh(C C^T) when s_min >= 1e-4 s_max: singular values within 1e-8
    relative of LAPACK's SVD, orthonormal vectors, the same product."""
    from peru_core.lowrank import _core_svd

    g = torch.Generator().manual_seed(9)
    q1 = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))[0]
    s = torch.logspace(0, float(np.log10(ratio)), 32, dtype=torch.float64)
    core = (q1 * s) @ q2.T
    u, got, v = _core_svd(core, exact=False)
    ref = torch.linalg.svdvals(core)
    assert ((got - ref).abs() / ref).max() <= 1e-8
    eye = torch.eye(32, dtype=torch.float64)
    assert torch.allclose(u.T @ u, eye, atol=1e-9) and torch.allclose(v.T @ v, eye, atol=1e-9)
    assert torch.allclose((u * got) @ v.T, core, atol=1e-12)


@pytest.mark.parametrize("kind", ["ill-conditioned", "rank-deficient", "zero"])
def test_eigh_core_falls_back_to_the_svd(kind):
    from peru_core.lowrank import _core_svd

    g = torch.Generator().manual_seed(10)
    core = torch.randn(16, 16, generator=g, dtype=torch.float64)
    if kind == "ill-conditioned":
        core[:, 0] *= 1e-6
    elif kind == "rank-deficient":
        core[:, 3] = core[:, 2]
    else:
        core.zero_()
    exact = torch.linalg.svd(core)
    u, s, v = _core_svd(core, exact=False)
    assert torch.equal(s, exact.S) and torch.equal(u, exact.U) and torch.equal(v, exact.Vh.T)


def test_adapter_svd_does_not_depend_on_the_thread_count():
    """One matrix per worker thread, one torch thread each: bit-identical to running them one by one on one thread,
    and the caller's own thread count is left as it was."""
    g = torch.Generator().manual_seed(12)
    from peru_core.io import LoraAdapter, LoraFactors

    ad = LoraAdapter("t", {f"m{i}": LoraFactors(torch.randn(8, 40 + i, generator=g),
                                                torch.randn(50 - i, 8, generator=g), 0.5) for i in range(6)})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = truncate_adapter(adapter_svd(ad), 5)
        torch.set_num_threads(3)
        pooled = truncate_adapter(adapter_svd(ad), 5)
        assert torch.get_num_threads() == 3
        started_later = []  # torch's default for new threads is the last count set: still the caller's
        t = threading.Thread(target=lambda: started_later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert started_later == [3]
    finally:
        torch.set_num_threads(before)
    for k in one:
        assert torch.equal(one[k].U, pooled[k].U) and torch.equal(one[k].S, pooled[k].S)
        assert torch.equal(one[k].Vh, pooled[k].Vh)
