"""Parameter counts as in the paper; bytes as the sizes of the files written (see test_file_bytes.py)."""
from __future__ import annotations

import math

import torch

from peru_core.accounting import (dtype_bytes, full_accounting, lowrank_params, merge_accounting, reuse_accounting,
                                  safetensors_bytes)
from peru_core.sparse import encoding, part_entries


def test_sparse_parts_take_the_cheaper_positions():
    d = 1_000_000
    assert encoding(d, 1000) == "indices"  # 4 kB of int32 beat a 125 kB mask at 0.1%
    assert encoding(d, 100_000) == "mask"  # the mask wins at 10%
    assert encoding(d, 0) == "indices" and encoding(d, d) == "dense"
    sizes = {n: math.prod(s) * dtype_bytes(t) for n, t, s in part_entries(d, 100_000, torch.float16)}
    assert sizes == {"values": 200_000, "mask": 125_000}


def test_reuse_accounting_paper_count():
    d, shared = 1000, 1200
    acc = reuse_accounting("peru-fft", shared, 5000, [100, 100, 100], [700, 700, 700])
    assert acc.total_params == shared + 3 * 100  # shared + T x m% of d
    assert acc.total_bytes == 5000 + 3 * 700
    assert acc.to_dict()["total_params"] == acc.total_params


def test_lowrank_params():
    shapes = [(768, 3072), (3072, 768)]
    assert lowrank_params(shapes, 16) == 16 * (768 + 3072 + 1) * 2
    assert lowrank_params([(10, 4)], 16) == 4 * 15  # capped by min(d_out, d_in)
    assert lowrank_params([(10, 20, 2)], 16) == 2 * 31  # capped by the LoRA rank


def test_references_and_dtypes():
    assert merge_accounting("ties", 10, 40, 3).total_params == 10
    single = full_accounting(10, [48, 48, 48])
    assert single.total_params == 30 and single.shared_params == 0 and single.total_bytes == 144
    assert dtype_bytes(torch.bfloat16) == 2 and dtype_bytes(torch.float64) == 8
    assert safetensors_bytes([], None) == 16  # "{}" padded to 8 bytes after the 8-byte length
