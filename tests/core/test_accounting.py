"""Parameter counts as in the paper and honest bytes."""
from __future__ import annotations

import math

import torch

from peru_core.accounting import (dtype_bytes, full_accounting, lowrank_accounting, lowrank_params,
                                  merge_accounting, sparse_accounting, sparse_bytes, sparse_index_bytes)


def test_sparse_bytes_take_the_cheaper_index():
    d = 1_000_000
    assert sparse_index_bytes(d, 1000) == 4000  # indices win at 0.1%
    assert sparse_index_bytes(d, 100_000) == math.ceil(d / 8)  # bitmask wins at 10%
    assert sparse_index_bytes(d, 0) == 0 and sparse_index_bytes(d, d) == 0
    assert sparse_bytes(d, 100_000, 2) == 200_000 + 125_000


def test_sparse_accounting_paper_count():
    d, shared = 1000, 1200
    acc = sparse_accounting("peru-fft", shared, shared * 4, d, [100, 100, 100], 4)
    assert acc.total_params == shared + 3 * 100  # shared + T x m% of d
    assert acc.total_bytes == shared * 4 + 3 * (400 + 125)
    assert acc.to_dict()["total_params"] == acc.total_params


def test_lowrank_accounting():
    shapes = [(768, 3072), (3072, 768)]
    assert lowrank_params(shapes, 16) == 16 * (768 + 3072 + 1) * 2
    assert lowrank_params([(10, 4)], 16) == 4 * 15  # capped by min(d_out, d_in)
    assert lowrank_params([(10, 20, 2)], 16) == 2 * 31  # capped by the LoRA rank
    acc = lowrank_accounting("peru-lora", 100, 400, [shapes, shapes], 16, 2)
    assert acc.task_params == (lowrank_params(shapes, 16),) * 2
    assert acc.task_bytes == (2 * lowrank_params(shapes, 16),) * 2


def test_references_and_dtypes():
    assert merge_accounting("ties", 10, 40, 3).total_params == 10
    assert full_accounting(10, 40, 8, 3, 4).total_params == 10 + 24
    assert dtype_bytes(torch.bfloat16) == 2 and dtype_bytes(torch.float64) == 8
