"""Trade-offs: accuracy against parameters and bytes over m% and q, the Pareto frontier, the budget question.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import streamlit as st

from peru_core import viz
from ui import cache, page, sidebar, specs, state, widgets

page.setup("Trade-offs", ":material/show_chart:")
ctx = sidebar.context()
page.intro(
    "Trade-offs",
    "Every point is one method at one setting: its average accuracy over the tasks against what it costs to serve "
    "all $T$ tasks (the shared model plus $T$ task parts). Points up and to the left are better; the grey staircase "
    "is the Pareto frontier (no other setting is both smaller and more accurate), and the dashed lines are "
    "Pre-trained and Single-Task.",
    r"\#\text{params} = |\theta_{\text{shared}}| + T \cdot \begin{cases} \tfrac{m}{100}\, d & \text{sparse (top-}m\%) "
    r"\\ \sum_{\ell} q\,(d_{\text{out}}^{\ell} + d_{\text{in}}^{\ell} + 1) & \text{PERU-LoRA} \end{cases}",
    "Figures 1, 2, 5, 6 and 7 (accuracy against m% and q) and the #params column of Table 1",
)



@st.fragment
@page.guarded
def per_task(df) -> None:
    """Plot controls over computed data rerun only this fragment."""
    x = state.kept(st.radio, "x axis", key=state.TO_X, options=["params", "bytes"], index=0, horizontal=True)
    st.plotly_chart(viz.per_task_tradeoff(df, x), key="to_per_task")


with page.user_errors():
    rt = ctx.runtime
    c = st.columns([1, 2, 2, 1])
    with c[0]:
        source = widgets.source_picker(state.TO_SOURCE, rt)
    options = specs.method_options(source, ctx.zoo)
    with c[1]:
        methods = state.kept(st.multiselect, "Methods", key=state.TO_METHODS, options=list(options),
                             format_func=options.get,
                             default=[m for m in specs.default_methods(source) if m in options])
    keeps, ranks, scope = [], [], "global"
    with c[2]:
        if any(m.startswith(("post-pruning", "peru-fft")) for m in methods):
            keeps = state.kept(st.multiselect, "m values (%)", key=state.TO_KEEPS, options=list(specs.KEEP_GRID),
                               default=list(specs.DEFAULT_KEEPS), format_func=lambda v: f"{v:g}%")
            scope = state.kept(st.radio, "Top-m% over", key=state.TO_SCOPE, options=["global", "per-tensor"],
                               index=0, horizontal=True)
        if "peru-lora" in methods:
            grid = specs.rank_grid(widgets.lora_rank(rt))
            ranks = state.kept(st.multiselect, "q values", key=state.TO_RANKS, options=grid, default=grid)
    wanted = specs.sweep(source, methods, sorted(keeps), sorted(ranks), scope)
    todo = cache.missing(rt, wanted, ctx.zoo_hash)
    with c[3]:
        st.write("")
        clicked = st.button("Compute the missing", key=state.TO_COMPUTE, type="primary", disabled=not todo,
                            help="Evaluates every setting of the sweep that the results store lacks.")
    if clicked and todo:
        cache.compute(rt, todo, "Computing the sweep")
        st.rerun()  # redraw the controls with everything computed
    done = [sp for sp in wanted if sp not in set(todo)]
    if todo:
        st.info(f"{len(done)} of {len(wanted)} settings are computed; press **Compute the missing** for "
                f"the other {len(todo)} (each evaluates every task). The plots show what is computed.")
    if not done:
        st.stop()
    df = cache.results(rt, done, ctx.zoo_hash)

    st.subheader("The budget question")
    b = st.columns([1, 3])
    sizes = viz.summary(df)
    full_part = sizes.loc[sizes["mode"] == "single-task", "task_bytes"].max()
    full_part = float(full_part) if full_part == full_part and full_part > 0 else 1e6  # NaN when not computed
    budget = state.kept(b[0].number_input, "Extra MB per task", key=state.TO_BUDGET, min_value=0.0,
                        max_value=1e6, value=round(full_part / 1e6 * 0.1, 3), step=0.01, format="%.3f",
                        help="Bytes each task may add on top of the shared model (1 MB = 10^6 bytes).")
    with b[1].container(key="to_answer"):
        st.markdown(viz.budget_sentence(df, budget))
        st.caption(f"For scale: a full fine-tuned part is {viz.fmt_bytes(full_part)} per task.")

    tabs = st.tabs(["Accuracy vs #params", "Accuracy vs bytes", "Accuracy vs m% / q", "Per task", "Table"])
    with tabs[0]:
        st.plotly_chart(viz.tradeoff(df, "params"), key="to_params")
    with tabs[1]:
        st.plotly_chart(viz.tradeoff(df, "bytes"), key="to_bytes")
        st.caption("Bytes are what a file really holds: a sparse part stores each kept value and its position (a "
                   "bitmask of d/8 bytes or 4-byte indices, whichever is smaller), so bytes grow faster than #params.")
    with tabs[2]:
        for knob in ("keep", "rank"):
            if df[knob].notna().any():
                st.plotly_chart(viz.knob_curve(df, knob), key=f"to_curve_{knob}")
    with tabs[3]:
        per_task(df)
    with tabs[4]:
        st.dataframe(viz.accuracy_table(df, ctx.zoo.task_names), key="to_table")
        st.download_button("Results (CSV)", df.to_csv(index=False).encode(), file_name="tradeoffs.csv",
                           mime="text/csv", key=state.TO_CSV, on_click="ignore")
