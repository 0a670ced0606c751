"""Every page opens without an exception, teaches (text + formula + the paper figure it mirrors), and reacts."""
from __future__ import annotations

import pytest
from app_helpers import computed, ok, open_page, press

from peru_core.merging import get_method
from ui import state
from ui.sidebar import NAV

PAGES = [path for path, _, _ in NAV[1:]]  # every page of the sidebar but Home (tested on its own)


def _teaches(at) -> None:
    assert at.title and at.latex, "every page opens with its title and formula"
    assert any("PERU paper" in c.value and ("Table" in c.value or "Figure" in c.value or "Section" in c.value)
               for c in at.caption)


def test_home_summarises_the_zoo(app):
    at = ok(app.run())
    _teaches(at)
    assert at.metric[0].value == "2"  # tasks of the tiny zoo
    labels = [t.value.index.tolist() for t in at.table]
    assert any({"Pre-trained", "Single-Task", "Single-Task [LoRA]"} <= set(rows) for rows in labels)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens(app, page):
    _teaches(open_page(app, page))


def _table_rows(at) -> list[str]:
    return at.table[0].value.index.tolist()


def test_merge_lab_sliders_come_from_the_registry_and_change_the_result(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    for p in get_method("task_arithmetic").params:
        s = at.slider(key=state.param_key("lab", "task_arithmetic", p.name))
        assert (s.min, s.max, s.value) == (p.low, p.high, p.default)
    press(at, state.LAB_COMPUTE)
    assert "PERU-FFT (Task Arithmetic) 10%" in _table_rows(at)
    ok(at.button(key=state.LAB_PREPARE).click().run())  # merged model + one part per task, as safetensors
    files = [b.label for b in at.get("download_button")]
    assert "shared_model.safetensors" in files and sum(f.endswith("pct.safetensors") for f in files) == 2
    before = at.metric[1].value  # extra bytes per task
    ok(at.slider(key=state.LAB_KEEP).set_value(30.0).run())
    assert at.button(key=state.LAB_COMPUTE).disabled is False  # a new setting waits for the button
    press(at, state.LAB_COMPUTE)
    assert "PERU-FFT (Task Arithmetic) 30%" in _table_rows(at)
    assert at.metric[1].value != before
    ok(at.slider(key=state.LAB_KEEP).set_value(10.0).run())  # back to a computed setting: shown without compute
    assert at.button(key=state.LAB_COMPUTE).disabled is True
    assert "PERU-FFT (Task Arithmetic) 10%" in _table_rows(at)


def test_peru_lora_rank_slider(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    ok(at.radio(key=state.LAB_SOURCE).set_value("lora").run())
    ok(at.radio(key="lab_mode_lora").set_value("peru-lora").run())
    assert at.slider(key="lab_rank_lora").max == 4  # the tiny zoo's LoRA rank
    ok(at.slider(key="lab_rank_lora").set_value(2).run())
    press(at, state.LAB_COMPUTE)
    assert "PERU-LoRA q=2" in _table_rows(at)


def test_out_of_range_values_are_repaired_not_fatal(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    ok(at.switch_page("app.py").run())  # values kept while away from the page, now stale
    at.session_state[state.SHADOW + state.LAB_KEEP] = 500.0
    at.session_state[state.SHADOW + state.LAB_MERGE] = "no-such-method"
    ok(at.switch_page("pages/1_Merge_lab.py").run())
    assert at.slider(key=state.LAB_KEEP).value == 100.0
    assert at.selectbox(key=state.LAB_MERGE).value == "task_arithmetic"


def test_tradeoffs_budget_answer_follows_the_budget(app):
    at = open_page(app, "pages/2_Trade-offs.py")
    ok(at.multiselect(key=state.TO_KEEPS).set_value([1.0, 10.0]).run())
    press(at, state.TO_COMPUTE)
    assert at.button(key=state.TO_COMPUTE).disabled is True
    assert len(at.get("plotly_chart")) >= 3
    ok(at.number_input(key="to_budget_full").set_value(0.0).run())
    zero = [m.value for m in at.markdown if "With 0 MB" in m.value]
    ok(at.number_input(key="to_budget_full").set_value(1000.0).run())
    big = [m.value for m in at.markdown if "With 1000 MB" in m.value]
    assert zero and big and zero[0].split("**")[1] != big[0].split("**")[1]


def test_spectra_rank_slider_moves_the_marked_q(app):
    at = open_page(app, "pages/3_Spectra.py")
    ok(at.slider(key=state.SP_RANK).set_value(1).run())
    q1 = [c.value for c in at.caption if c.value.startswith("At q=1,")]
    ok(at.slider(key=state.SP_RANK).set_value(3).run())
    q3 = [c.value for c in at.caption if c.value.startswith("At q=3,")]
    assert q1 and q3 and q1[0] != q3[0]


def test_embeddings_compute_panels(app):
    at = open_page(app, "pages/4_Embeddings.py")
    ok(at.multiselect(key="em_methods_full").set_value(["merge:task_arithmetic", "peru-fft:task_arithmetic"]).run())
    ok(at.slider(key=state.EM_PERPLEXITY).set_value(5.0).run())
    press(at, state.EM_COMPUTE)
    names = [m.label for m in at.metric]
    assert names.count("silhouette") == 2 and names.count("5-NN accuracy") == 2
    first = [m.value for m in at.metric]
    ok(at.slider(key=state.EM_KEEP).set_value(0.0).run())  # a new setting waits for the button
    assert any("Compute t-SNE" in i.value for i in at.info)
    press(at, state.EM_COMPUTE)
    assert [m.value for m in at.metric] != first
