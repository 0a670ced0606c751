"""Kept entries per layer of a top-m% part: they sum to the part's nnz and equal a brute-force recount."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from peru_core.part_layout import kept_per_tensor, rank_layout, sparse_layout
from peru_core.sparse import keep_count, top_m


@pytest.mark.parametrize("keep", [0.0, 1.0, 10.0, 37.0, 100.0])
def test_counts_sum_to_nnz_and_equal_a_recount(keep):
    g = torch.Generator().manual_seed(0)
    tv = {"a": torch.randn(30, 20, generator=g) * 3, "b": torch.randn(17, generator=g),
          "c": torch.randn(8, 9, generator=g) * 0.1}
    part = top_m(tv, keep, device="cpu")
    counts = kept_per_tensor(part.layout, part.indices)
    assert counts.sum() == part.nnz == keep_count(part.d, keep)
    dense = part.to_state_dict()
    recount = [int((dense[k] != 0).sum()) for k in part.layout.keys]  # randn: no kept value is exactly 0
    assert counts.tolist() == recount
    df = sparse_layout(part)
    assert df["kept"].sum() == part.nnz and df["size"].tolist() == [600, 17, 72]
    if part.nnz:
        assert np.isclose(df["share"].sum(), 1.0)


def test_rank_layout_counts_values_per_matrix():
    df = rank_layout({"x": (8, 6, 2), "y": (5, 8, 2)}, {"x": 4, "y": 4})
    assert df["kept"].tolist() == [2, 2] and df["values"].tolist() == [2 * 15, 2 * 14]
    assert np.isclose(df["share"].sum(), 1.0) and df["fraction"].tolist() == [0.5, 0.5]
