"""The registry drives the Merge lab and Trade-offs: every registered merge is offered, gets its widgets (sliders for
numbers, selectboxes for choices such as TIES's conventions) and computes on the tiny zoo with no page edit; TALL
masks and EMR-Merging are reuse modes with their sliders and honest #params / bytes (issue 9: a new method is one
file in peru_core/merging/, or one entry of peru_core/partreuse.PART_METHODS)."""
from __future__ import annotations

from app_helpers import ok, open_page, press

from peru_core import experiments as ex, viz
from peru_core.merging import get_method, list_methods
from peru_core.partreuse import PART_METHODS
from peru_core.spec import RunSpec
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime
from ui import state
from ui.widgets import TEST_TIME_WARNING

SMALL = {"adamerging": {"steps": 2, "batch": 8}}  # keep test-time training short in the tests


def _rows(at) -> list[str]:
    return at.table[0].value.index.tolist()


def _check_widgets(at, prefix: str, method) -> None:
    """The widgets are the Params: a slider's range and default, a selectbox's choices and default."""
    for p in method.params:
        key = state.param_key(prefix, method.name, p.name)
        if p.is_choice:
            box = at.selectbox(key=key)
            assert list(box.options) == [p.choice_label(c) for c in p.choices] and box.value == p.default, p.name
        else:
            s = at.slider(key=key)
            assert (s.min, s.max, s.value) == (p.low, p.high, p.default), (method.name, p.name)


def test_every_registered_merge_computes_in_the_merge_lab(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    ok(at.radio(key=state.for_source(state.LAB_MODE, "full")).set_value("merge").run())
    offered = at.selectbox(key=state.LAB_MERGE).options
    methods = [m for m in list_methods() if not m.needs_validation]  # Fisher / RegMean: test_fisher_regmean
    assert {m.label for m in methods} <= set(offered)
    for m in methods:
        if m.name in ("task_arithmetic", "average"):
            continue  # the paper's merges: covered by test_pages
        ok(at.selectbox(key=state.LAB_MERGE).set_value(m.name).run())
        _check_widgets(at, "lab", m)
        warned = [w.value for w in at.warning if w.value == TEST_TIME_WARNING]
        assert bool(warned) == m.test_time, m.name  # AdaMerging says it trains on the test images
        for name, value in SMALL.get(m.name, {}).items():
            ok(at.slider(key=state.param_key("lab", m.name, name)).set_value(value).run())
        press(at, state.LAB_COMPUTE)
        assert any(r.startswith(m.label) for r in _rows(at)), (m.name, _rows(at))


def test_ties_conventions_are_selectboxes_that_reach_the_spec(app):
    at = open_page(app, "pages/1_Merge_lab.py")
    ok(at.radio(key=state.for_source(state.LAB_MODE, "full")).set_value("merge").run())
    ok(at.selectbox(key=state.LAB_MERGE).set_value("ties").run())
    ties = get_method("ties")
    assert [p.name for p in ties.params if p.is_choice] == ["trim_count", "zero_sign", "scope", "aggregate"]
    ok(at.selectbox(key=state.param_key("lab", "ties", "zero_sign")).set_value("majority").run())
    ok(at.selectbox(key=state.param_key("lab", "ties", "aggregate")).set_value("sum").run())
    press(at, state.LAB_COMPUTE)
    label = RunSpec.make("merge", "full", "ties", {"zero_sign": "majority", "aggregate": "sum"}).label
    assert label in _rows(at) and "zero_sign=majority" in label, _rows(at)


def test_tall_and_emr_in_the_merge_lab_show_their_sliders_and_costs(app, tiny_zoo_dir):
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")
    at = open_page(app, "pages/1_Merge_lab.py")
    for mode, method in PART_METHODS.items():
        ok(at.radio(key=state.for_source(state.LAB_MODE, "full")).set_value(mode).run())
        _check_widgets(at, "lab", method)
        assert state.LAB_MERGE not in [b.key for b in at.selectbox]  # no merge to pick: its knobs are its own
        params = {"tall_mask_lambda": 0.4} if mode == "tall" else {}
        for name, value in params.items():
            ok(at.slider(key=state.param_key("lab", mode, name)).set_value(value).run())
        press(at, state.LAB_COMPUTE)
        spec = RunSpec.make(mode, "full", params=params)
        rows = _rows(at)
        assert spec.label in rows, rows
        if method.merge:  # TALL's row sits after the merge whose task vector it masks
            assert RunSpec.make("merge", "full", method.merge, method.merge_spec_params(dict(spec.params))).label \
                in rows
        costs = ex._costs(rt, spec)
        extra, total = at.metric[1], at.metric[2]
        assert extra.value == viz.fmt_bytes(costs.task_bytes[0])
        assert extra.delta == f"{viz.fmt_count(costs.task_params[0])} params"
        assert total.value == viz.fmt_bytes(costs.total_bytes)
        assert total.delta == f"{viz.fmt_count(costs.total_params)} params"


def test_tradeoffs_offers_tall_and_emr(app):
    at = open_page(app, "pages/2_Trade-offs.py")
    key = state.for_source(state.TO_METHODS, "full")
    options = at.multiselect(key=key).options
    for method in PART_METHODS.values():
        assert method.label in options, options
    ok(at.multiselect(key=key).set_value(["tall", "emr", "post-pruning"]).run())
    ok(at.multiselect(key=state.TO_KEEPS).set_value([10.0]).run())
    press(at, state.TO_COMPUTE)
    assert at.button(key=state.TO_COMPUTE).disabled is True  # every point computed, TALL and EMR included
    assert len(at.get("plotly_chart")) >= 1
