"""The Spectra page's ablation views on the tiny zoo: task-vector similarity, where the task part lives, Table 6."""
from __future__ import annotations

import numpy as np
import pytest

from app_helpers import chart, computed, ok, open_page

PAGE = "pages/3_Spectra.py"


def _captions(at, start: str) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith(start)]


def test_similarity_heatmap_per_source_and_layer(app):
    at = open_page(app, PAGE)
    fig = chart(at, "sp_sim_heatmap")
    z = np.array(fig["data"][0]["z"], dtype=float)
    assert z.shape == (2, 2) and np.allclose(np.diag(z), 1.0)
    assert fig["data"][0]["zmid"] == 0.0
    assert fig["data"][0]["x"] == ["Stripes", "Blobs"]
    full = _captions(at, "Full fine-tunes, all layers (flattened)")
    assert full and f"{z[0, 1]:.3f}" in full[0]
    ok(at.radio(key="sp_sim_source").set_value("lora").run())
    lora = chart(at, "sp_sim_heatmap")
    assert not np.allclose(np.array(lora["data"][0]["z"], float)[0, 1], z[0, 1])
    layers = at.selectbox(key="sp_sim_layer_lora").options
    assert len(layers) == 3  # flattened + the two adapted MLP matrices
    ok(at.selectbox(key="sp_sim_layer_lora").set_value(
        "visual.transformer.resblocks.0.mlp.c_fc.weight").run())
    assert _captions(at, "LoRA fine-tunes, block 0 · MLP up-proj")


def test_part_layout_bars_sum_to_the_part(app):
    at = open_page(app, PAGE)
    ok(at.radio(key="sp_lay_method").set_value("post-pruning").run())
    ok(at.slider(key="sp_lay_keep").set_value(10.0).run())
    ok(at.radio(key="sp_lay_value").set_value("share").run())
    fig = chart(at, "sp_layout_bars")
    kept = np.array([c[0] for c in fig["data"][0]["customdata"]], dtype=np.int64)
    sizes = np.array([c[1] for c in fig["data"][0]["customdata"]], dtype=np.int64)
    assert kept.sum() == int(np.floor(sizes.sum() * 0.10 + 0.5))  # global top-10%: the part's nnz
    assert np.isclose(sum(fig["data"][0]["x"]), 100.0)
    assert _captions(at, f"{kept.sum():,} kept entries")
    ok(at.radio(key="sp_lay_method").set_value("lora").run())
    ok(at.slider(key="sp_lay_rank_lora").set_value(2).run())
    fig = chart(at, "sp_layout_bars")
    assert list(fig["data"][0]["x"]) == [2, 2]
    assert _captions(at, "2 matrices keep rank 2")


def test_table6_errors_then_accuracies_on_a_press(app):
    at = open_page(app, PAGE)
    err = chart(at, "sp_t6_error")
    assert [t["name"] for t in err["data"]] == ["Approx(BA): the product truncated (PERU-LoRA)",
                                               "Approx(B) Approx(A): each factor truncated"]
    product, factors = (np.array(t["y"], float) for t in err["data"])
    assert list(err["data"][0]["x"]) == [1, 2, 4]
    assert np.all(product <= factors + 1e-9) and abs(product[-1]) < 1e-4 and abs(factors[-1]) < 1e-4
    assert any("Compute accuracies" in i.value for i in at.info)
    ok(at.button(key="sp_t6_compute").click().run())
    at = computed(at)
    acc = chart(at, "sp_t6_accuracy")
    assert len(acc["data"]) == 4  # 2 variants x (the task, the average)
    last = [t["y"][-1] for t in acc["data"]]
    assert np.isclose(last[0], last[2]) and np.isclose(last[1], last[3])  # at q = r both are the LoRA fine-tune
    assert _captions(at, "Average over 2 tasks, product vs factors truncated: q=1:")
    assert at.button(key="sp_t6_compute").disabled


def test_part_layout_shows_tall_mask_density_when_registered(app):
    at = open_page(app, PAGE)
    if "TALL mask (default parameters)" not in at.radio(key="sp_lay_method").options:  # the labels shown
        pytest.skip("no TALL masks registered in this build")
    ok(at.radio(key="sp_lay_method").set_value("tall").run())
    ok(at.radio(key="sp_lay_value").set_value("fraction").run())
    fig = chart(at, "sp_layout_bars")
    kept = np.array([c[0] for c in fig["data"][0]["customdata"]], dtype=np.int64)
    assert _captions(at, f"{kept.sum():,} kept entries")
