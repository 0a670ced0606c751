"""The Trade-offs page's budget planner and ablation views (Tables 10, 7 / B.3 and 5) on the tiny zoo."""
from __future__ import annotations

from app_helpers import chart, ok, open_page, press

from ui import state
from ui import tradeoff_ablations as ta

PAGE = "pages/2_Trade-offs.py"


def _has_chart(at, key: str) -> bool:
    return any(c.proto.id and key in c.proto.id for c in at.get("plotly_chart"))


def _plan_table(at):
    """The planner's per-task table (the only frame with planned parts)."""
    found = [d.value for d in at.dataframe if "planned part (bytes)" in d.value.columns]
    assert found, "no planner table"
    return found[0]


def _captions(at, start: str) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith(start)]


def test_planner_says_what_is_missing_then_allocates_within_the_budget(app):
    at = open_page(app, PAGE)
    ok(at.multiselect(key=state.TO_KEEPS).set_value([1.0, 10.0, 30.0]).run())
    assert any("grid points of Post-Pruning are computed" in i.value for i in at.info)
    at = press(at, ta.PL_COMPUTE)
    assert not [b for b in at.button if b.key == ta.PL_COMPUTE]  # every grid point is computed now
    budget = at.number_input(key="to_plan_budget_post-pruning_full")
    lo, hi = budget.min, budget.max
    assert 0 < lo < hi
    for mb in (lo, (lo + hi) / 2, hi):
        ok(budget.set_value(mb).run())
        table = _plan_table(at)
        used = int(table["planned part (bytes)"].sum())
        assert used <= mb * 1e6 + 1
        cap = _captions(at, "Bytes used = the sum of the 2 part files' sizes")
        assert cap and f"{used:,} bytes" in cap[0]
        exact, greedy, uniform = (m.value for m in at.metric[:3])
        assert float(exact.rstrip("%")) >= float(greedy.rstrip("%"))
        if uniform != "none fits":
            assert float(exact.rstrip("%")) >= float(uniform.rstrip("%"))
        assert _captions(at, "Within ")
        budget = at.number_input(key="to_plan_budget_post-pruning_full")
    fig = chart(at, "to_plan_chart")
    assert [t["name"] for t in fig["data"]][:1] == ["per-task allocation (exact, DP)"]
    assert "MB" in fig["layout"]["xaxis"]["title"]["text"]


def test_planner_on_lora_plans_q(app):
    at = open_page(app, PAGE)
    ok(at.radio(key=state.TO_SOURCE).set_value("lora").run())
    at = press(at, ta.PL_COMPUTE)
    table = _plan_table(at)
    assert "planned q" in table.columns and set(table["planned q"]) <= {1, 2, 4}


def test_table10_renders_after_its_compute(app):
    at = open_page(app, PAGE)
    assert not _has_chart(at, "to_t10_chart")
    ok(at.multiselect(key=ta.T10_KEEPS).set_value([10.0]).run())
    at = press(at, ta.T10_COMPUTE)
    fig = chart(at, "to_t10_chart")
    assert len(fig["data"]) == 3 and all(len(t["y"]) == 1 for t in fig["data"])
    assert fig["data"][0]["name"].startswith("θ_t itself")
    assert _captions(at, "Average over 2 tasks: m=10%:")
    assert at.button(key=ta.T10_COMPUTE).disabled


def test_task_count_renders_after_its_compute(app):
    at = open_page(app, PAGE)
    assert any("subsets of T = 1 to 2 tasks" in i.value for i in at.info)
    at = press(at, ta.TC_COMPUTE)
    fig = chart(at, "to_tc_chart")
    means = [t for t in fig["data"] if t["name"].endswith("mean over subsets")]
    assert len(means) == 2 and all(list(t["x"]) == [1, 2] for t in means)
    assert _captions(at, "Mean over subsets of each subset's average accuracy:")


def test_table5_one_chart_over_the_merges(app):
    at = open_page(app, PAGE)
    ok(at.multiselect(key=ta.T5_MERGES).set_value(["task_arithmetic", "ties"]).run())
    at = press(at, ta.T5_COMPUTE)
    fig = chart(at, "to_t5_chart")
    assert [t["name"] for t in fig["data"]] == ["the merge alone", "+ PERU-FFT: top-10% of u_t per task"]
    assert list(fig["data"][0]["y"]) == ["Task Arithmetic", "TIES-Merging"]
    assert _captions(at, "Over 2 merges, alone")
