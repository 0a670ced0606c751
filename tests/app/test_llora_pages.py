"""Every page with L-LoRA fine-tunes chosen (issue 13): the third kind computes and is labelled [L-LoRA] everywhere."""
from __future__ import annotations

from app_helpers import ok, open_page, press

from ui import state


def _rows(at) -> list[str]:
    return [i for t in at.table for i in t.value.index.tolist()] + \
        [i for d in at.dataframe for i in d.value.index.astype(str).tolist()]


def test_home_lists_the_llora_reference(app):
    at = ok(app.run())
    if [b for b in at.button if b.key == state.HOME_EVALUATE]:  # references are evaluated on request
        at = press(at, state.HOME_EVALUATE)
    text = " ".join(str(t.value) for t in at.table) + " ".join(str(d.value) for d in at.dataframe)
    assert "Single-Task [L-LoRA]" in text
    assert "L-LoRA" in text  # the fine-tunes column names the third kind


def test_merge_lab_with_llora(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    ok(at.radio(key=state.LAB_SOURCE).set_value("llora").run())
    assert at.radio(key=state.for_source(state.LAB_MODE, "llora")).value == "peru-lora"
    ok(at.slider(key=state.for_source(state.LAB_RANK, "llora")).set_value(2).run())
    at = press(at, state.LAB_COMPUTE)
    rows = _rows(at)
    assert "PERU-LoRA [L-LoRA] q=2" in rows and "Single-Task [L-LoRA]" in rows
    ok(at.radio(key=state.for_source(state.LAB_MODE, "llora")).set_value("merge").run())
    at = press(at, state.LAB_COMPUTE)
    assert any(r.startswith("Task Arithmetic [L-LoRA]") for r in _rows(at))


def test_tradeoffs_with_llora(app):
    at = open_page(app, "pages/2_Trade-offs.py")
    ok(at.radio(key=state.TO_SOURCE).set_value("llora").run())
    ok(at.multiselect(key=state.for_source(state.TO_RANKS, "llora")).set_value([1, 2]).run())
    at = press(at, state.TO_COMPUTE)
    figs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("PERU-LoRA [L-LoRA]" in f for f in figs)


def test_embeddings_offers_llora(app):
    at = open_page(app, "pages/4_Embeddings.py")
    ok(at.radio(key=state.EM_SOURCE).set_value("llora").run())
    chosen = at.multiselect(key=state.for_source(state.EM_METHODS, "llora"))
    assert "peru-lora" in chosen.value
    assert any("[L-LoRA]" in o for o in chosen.options)


def test_spectra_has_the_llora_products(app):
    at = open_page(app, "pages/3_Spectra.py")
    assert any(t.label == "L-LoRA" for t in at.tabs)
    assert not [i for i in at.info if "no an L-LoRA adapter" in i.value or "L-LoRA adapter in this zoo" in i.value]
    assert len(at.get("plotly_chart")) >= 2  # the LoRA and the L-LoRA spectra
