"""Merge lab: merge the zoo's fine-tunes with any registered method, add a task part, see what each task keeps.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import streamlit as st

from peru_core import viz
from ui import cache, page, sidebar, specs, state, widgets
from ui.downloads import downloads

page.setup("Merge lab", ":material/science:")
ctx = sidebar.context()
page.intro(
    "Merge lab",
    "A merge builds **one** model $\\theta^*$ for all tasks; each row of the table is a way of serving task $t$. "
    "Post-Pruning and PERU-FFT add the top-$m\\%$ entries (by magnitude) of a task's difference to the shared "
    "model; PERU-LoRA keeps the top-$q$ singular directions of each LoRA update. Read the table across: the closer a "
    "row's average gets to Single-Task for few extra bytes per task, the better.",
    r"\text{Task Arithmetic: } \theta^* = \theta_0 + \lambda \sum_{t=1}^T v_t \qquad "
    r"\text{PERU-FFT: } \theta^* + \operatorname{top}_{m\%}(\theta_t - \theta^*) \qquad "
    r"\text{Post-Pruning: } \theta_0 + \operatorname{top}_{m\%}(v_t)",
    "Table 1 (one row per method) and Figures 1 and 2",
)

with page.user_errors():
    rt = ctx.runtime
    left, right = st.columns([1, 2.2], gap="large")
    with left:
        source = widgets.source_picker(state.LAB_SOURCE, rt)
        merge, params = widgets.merge_picker("lab", ctx.zoo)
        modes = specs.REUSE_MODES[source]
        mode = state.kept(st.radio, "Task-specific part", key=state.LAB_MODE, options=list(modes),
                          format_func=modes.get, index=len(modes) - 1)
        keep = rank = None
        scope = "global"
        if mode in ("post-pruning", "peru-fft"):
            keep = widgets.keep_slider(state.LAB_KEEP)
            scope = state.kept(st.radio, "Top-m% over", key=state.LAB_SCOPE, options=["global", "per-tensor"],
                               index=0, horizontal=True, format_func={"global": "the whole vector",
                                                                      "per-tensor": "each tensor"}.get)
        elif mode == "peru-lora":
            rank = widgets.rank_slider(state.LAB_RANK, widgets.lora_rank(rt))
        wanted = specs.lab(source, merge, params, mode, keep, rank, scope)
        todo = cache.missing(rt, wanted, ctx.zoo_hash)
        auto = state.kept(st.toggle, "Compute automatically", key=state.LAB_AUTO, value=False,
                          help="Compute each new setting as soon as a slider moves (seconds on the demo zoo).")
        clicked = st.button("Compute", key=state.LAB_COMPUTE, type="primary", disabled=not todo)
    with right:
        if todo and (clicked or auto):
            cache.compute(rt, todo, f"Computing {wanted[-1].label}")
            st.rerun()  # redraw the controls (the button is disabled once nothing is missing)
        if todo:
            st.info(f"**{wanted[-1].label}** is not computed yet: press **Compute** "
                    f"({len(todo)} setting{'s' if len(todo) > 1 else ''} to evaluate on {len(ctx.zoo.tasks)} tasks).")
            last = st.session_state.get("_lab_last")
            if last and last[0] == ctx.zoo_hash and not cache.missing(rt, last[1], ctx.zoo_hash):
                wanted = last[1]
                st.caption("Below: the last computed setting.")
            else:
                st.stop()
        st.session_state["_lab_last"] = (ctx.zoo_hash, wanted)
        df = cache.results(rt, wanted, ctx.zoo_hash)
        chosen = viz.summary(df).iloc[-1]
        single = viz.summary(df[df["mode"] == "single-task"])
        with st.container(key="lab_results"):
            st.subheader(chosen["label"])
            m = st.columns(3)
            m[0].metric("Average accuracy", f"{chosen['accuracy'] * 100:.2f}%",
                        f"{(chosen['accuracy'] - single['accuracy'].iloc[0]) * 100:+.2f} points vs Single-Task",
                        delta_color="off", delta_arrow="off")
            m[1].metric("Extra per task", viz.fmt_bytes(chosen["task_bytes"]),
                        f"{viz.fmt_count(chosen['task_params'])} params", delta_color="off", delta_arrow="off")
            m[2].metric("Total (shared + T x task)", viz.fmt_bytes(chosen["bytes"]),
                        f"{viz.fmt_count(chosen['params'])} params", delta_color="off", delta_arrow="off")
        st.plotly_chart(viz.task_bars(df, height=340), key="lab_bars")
    with st.container(key="lab_table"):
        st.table(viz.accuracy_table(df, ctx.zoo.task_names).style.format(precision=2))
    downloads(rt, wanted[-1], df, prefix="lab")
