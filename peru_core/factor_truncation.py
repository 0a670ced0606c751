"""The paper's Table 6: truncate each LoRA factor to rank q, or truncate their product (PERU-LoRA), at the same q.

``Approx(B) Approx(A)``: the rank-q SVD truncation of B (out x r) and of A (r x in) separately, then the product
``scale * B_q A_q``. ``Approx(BA)``: PERU-LoRA, the rank-q SVD truncation of ``scale * B A`` itself, the best rank-q
approximation of the update (Eckart-Young), so its error ``||BA - approx||_F / ||BA||_F`` is never larger. Both keep
``q (d_out + d_in + 1)`` values per matrix. (The paper writes the update ``A_t B_t^T`` with A out x r; the factor
names here are PEFT's.) PERU: https://arxiv.org/abs/2310.01886, Appendix B.2, Table 6.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd
import torch

from peru_core.io import LoraAdapter, LoraFactors
from peru_core.lowrank import LowRank, ProductSVD
from peru_core.statedict import work_dtype
from peru_core.types import Progress, StateDict, report

FACTORS, PRODUCT = "Approx(B) Approx(A): each factor truncated", "Approx(BA): the product truncated (PERU-LoRA)"
VARIANTS = (FACTORS, PRODUCT)
ENGINE = "core1/factor-truncation1"  # results-store version of the factor-truncated rows (bump when they change)


def truncate_matrix(m: torch.Tensor, q: int) -> torch.Tensor:
    """The best rank-q approximation of ``m`` (float64, a dense SVD of a factor: r x in or out x r, small)."""
    u, s, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
    q = min(int(q), int(s.numel()))
    return (u[:, :q] * s[:q]) @ vh[:q]


def truncate_factors(f: LoraFactors, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B_q, A_q)``: each factor truncated to rank q separately; the update is ``scale * B_q A_q``."""
    return truncate_matrix(f.B, q), truncate_matrix(f.A, q)


def product_truncation(f: LoraFactors, q: int) -> LowRank:
    """PERU-LoRA's rank-q truncation of ``scale * B A`` (QR-core SVD, float64)."""
    return ProductSVD(f.A, f.B, f.scale, qr_dtype=torch.float64).truncate(q)


def _fro2(left: torch.Tensor, right: torch.Tensor) -> float:
    """``||left @ right||_F^2 = sum((L^T L) * (R R^T))``: on the k x k level, no out x in matrix formed."""
    return float(((left.T @ left) * (right @ right.T)).sum())


def _low_rank_pair(f: LoraFactors, variant: str, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with ``L @ R`` the approximation of ``scale * B A`` by ``variant`` at rank q (float64)."""
    if variant == FACTORS:
        b, a = truncate_factors(f, q)
        return b * f.scale, a
    lr = product_truncation(f, q)
    return lr.U * lr.S, lr.Vh


def relative_errors(adapter: LoraAdapter, ranks: Iterable[int]) -> pd.DataFrame:
    """``||Delta - approx||_F / ||Delta||_F`` over all of the adapter's matrices together, per variant and q (the
    squared errors and norms of every matrix summed, as for one flattened update). Exact: every norm is taken on the
    (2r x 2r) level of ``[s B, -L] [A; R]``."""
    rows = []
    for q in ranks:
        for variant in VARIANTS:
            err2 = norm2 = 0.0
            for f in adapter.values():
                b, a = f.B.to(torch.float64) * f.scale, f.A.to(torch.float64)
                left, right = _low_rank_pair(f, variant, q)
                norm2 += _fro2(b, a)
                err2 += max(_fro2(torch.cat([b, -left], 1), torch.cat([a, right], 0)), 0.0)
            rows.append({"variant": variant, "rank": int(q), "error": float(np.sqrt(err2 / norm2)) if norm2 else 0.0})
    return pd.DataFrame(rows, columns=["variant", "rank", "error"])


def factor_model(base: Mapping[str, torch.Tensor], adapter: LoraAdapter, q: int) -> StateDict:
    """``theta_0 + scale * Approx(B) Approx(A)`` on every target; other tensors are the base's (not copied)."""
    out: StateDict = dict(base)
    for k, f in adapter.items():
        w = base[k]
        b, a = truncate_factors(f, q)
        out[k] = (w.to(work_dtype(w.dtype)) + (f.scale * (b @ a)).to(work_dtype(w.dtype))).to(w.dtype)
    return out


def default_ranks(r: int) -> list[int]:
    """The q values of the view: powers of two below the adapters' rank r, and r itself (where both variants equal
    the LoRA fine-tune)."""
    return sorted({q for q in (1, 2, 4, 8, 16, 32, 64, 128) if q < r} | {int(r)})


def _factor_key(source: str, q: int) -> str:
    return json.dumps({"ablation": "factor-truncation", "source": source, "rank": int(q)}, sort_keys=True)


def _product_spec(source: str, q: int) -> Any:
    from peru_core.spec import Mode, RunSpec, Source

    return RunSpec.make(Mode.PERU_LORA, Source(source), rank=q)


def _engine(runtime: Any) -> str:
    """The factor rows' engine key: :data:`ENGINE`, with ``+<precision>`` for a non-float32 runtime (as
    :func:`peru_core.store.engine_key` does), so a bf16 row is never served as a float32 one."""
    from peru_core.experiments import precision_of

    precision = precision_of(runtime)
    return ENGINE if precision == "float32" else f"{ENGINE}+{precision}"


def stored_accuracies(runtime: Any, source: str, ranks: Iterable[int], store: Any) -> Optional[pd.DataFrame]:
    """The rows :func:`accuracies` computes, when every one is in ``store`` already; else None (nothing computed)."""
    from peru_core.experiments import precision_of, zoo_key

    names, zoo, rows = runtime.zoo.task_names, zoo_key(runtime), []
    for q in ranks:
        product = store.get(zoo, _product_spec(source, q).key(), names, precision=precision_of(runtime))
        factors = store.get(zoo, _factor_key(source, q), names, engine=_engine(runtime))
        if product is None or factors is None:
            return None
        rows += [{"variant": v, "rank": int(q), "task": r["task"], "accuracy": r["accuracy"]}
                 for v, hit in ((PRODUCT, product), (FACTORS, factors)) for r in hit]
    return pd.DataFrame(rows, columns=["variant", "rank", "task", "accuracy"])


def accuracies(runtime: Any, source: str, ranks: Iterable[int], store: Optional[Any] = None,
               on_progress: Progress = None) -> pd.DataFrame:
    """Per-task held-out accuracy of both variants at each q (rows: variant, rank, task, accuracy in [0, 1]).

    The product rows are PERU-LoRA run specs (:func:`peru_core.experiments.run_spec`, found in the results store when
    a sweep computed them); the factor rows are stored under their own key and :data:`ENGINE`, one transaction per q,
    so a cancelled run keeps the q values it finished."""
    from peru_core import experiments

    names, ranks = runtime.zoo.task_names, list(ranks)
    zoo, rows, n = experiments.zoo_key(runtime), [], 2 * max(len(ranks), 1)
    for j, q in enumerate(ranks):
        def sub(f: float, msg: str, j: int = j) -> None:
            report(on_progress, (2 * j + f) / n, msg)

        frame = experiments.run_spec(runtime, _product_spec(source, q), store, sub)
        rows += [{"variant": PRODUCT, "rank": int(q), "task": t, "accuracy": a}
                 for t, a in zip(frame["task"], frame["accuracy"])]
        hit = store.get(zoo, _factor_key(source, q), names, engine=_engine(runtime)) if store is not None else None
        if hit is None:
            with experiments.COMPUTE_LOCK:
                hit = []
                for i, t in enumerate(names):
                    report(on_progress, (2 * j + 1 + i / len(names)) / n,
                           f"each factor truncated to q={q}: evaluating {t}")
                    model = factor_model(runtime.base_state(), runtime.adapter(t, source), q)
                    hit.append({"task": t, "accuracy": float(runtime.accuracy(model, t))})
            if store is not None:
                store.put(zoo, _factor_key(source, q), hit, engine=_engine(runtime))
        rows += [{"variant": FACTORS, "rank": int(q), "task": r["task"], "accuracy": r["accuracy"]} for r in hit]
    report(on_progress, 1.0, "done")
    return pd.DataFrame(rows, columns=["variant", "rank", "task", "accuracy"])
