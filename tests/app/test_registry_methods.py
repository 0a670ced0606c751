"""The registry drives the Merge lab: every registered merge is offered, gets its sliders, and computes on the tiny
zoo with no page edit (issue 9: a new method is one file in peru_core/merging/)."""
from __future__ import annotations

from app_helpers import ok, open_page, press

from peru_core.merging import list_methods
from ui import state


def test_every_registered_merge_computes_in_the_merge_lab(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    ok(at.radio(key=state.for_source(state.LAB_MODE, "full")).set_value("merge").run())
    offered = at.selectbox(key=state.LAB_MERGE).options
    methods = [m for m in list_methods() if not m.needs]  # Fisher / RegMean: tested on their own (validation data)
    assert {m.label for m in methods} <= set(offered)
    for m in methods:
        if m.name in ("task_arithmetic", "average", "ties"):
            continue  # the paper's merges: covered by test_pages
        ok(at.selectbox(key=state.LAB_MERGE).set_value(m.name).run())
        for p in m.params:  # the sliders are the Params: range and default
            s = at.slider(key=state.param_key("lab", m.name, p.name))
            assert (s.min, s.max, s.value) == (p.low, p.high, p.default), (m.name, p.name)
        press(at, state.LAB_COMPUTE)
        rows = at.table[0].value.index.tolist()
        assert any(r.startswith(m.label) for r in rows), (m.name, rows)
