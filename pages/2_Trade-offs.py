"""Trade-offs: accuracy against parameters and bytes over m% and q, the Pareto frontier, the budget question.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import streamlit as st

from peru_core import viz
from peru_core.table import results_csv
from ui import cache, jobs, page, sidebar, specs, state, tradeoff_ablations, widgets

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
    "Figures 1, 2, 5, 6 and 7 (accuracy against m% and q), the #params column of Table 1, and the ablations of "
    "Tables 5, 7 and 10",
)



@st.fragment
@page.guarded
def per_task(df) -> None:
    """Plot controls over computed data rerun only this fragment."""
    x = state.kept(st.radio, "x axis", key=state.TO_X, options=["params", "bytes"], index=0, horizontal=True)
    st.plotly_chart(viz.per_task_tradeoff(df, x), key="to_per_task")


BUDGET_SHARE = {"full": 0.1, "lora": 0.3, "llora": 0.3}  # default budget: this share of a Single-Task part


def sweep_views(ctx, df, source: str) -> None:
    """The sweep's views over the computed settings: the budget question, the trade-off plots, the table."""
    st.subheader("The budget question")
    b = st.columns([1, 3])
    sizes = viz.summary(df)
    full_part = sizes.loc[sizes["mode"] == "single-task", "task_bytes"].max()
    full_part = float(full_part) if full_part == full_part and full_part > 0 else 1e6  # NaN when not computed
    # the default asks something worth asking: a share of what one Single-Task part costs for these fine-tunes
    # (an adapter is far smaller than a full fine-tune, so one budget for both made the LoRA answer trivial)
    default = float(f"{full_part / 1e6 * BUDGET_SHARE.get(source, 0.1):.2g}")
    budget = state.kept(b[0].number_input, "Extra MB per task", key=state.for_source(state.TO_BUDGET, source),
                        min_value=0.0, max_value=1e6, value=default, step=0.01, format="%.3f",
                        help="Bytes each task may add on top of the shared model (1 MB = 10^6 bytes).")
    with b[1].container(key="to_answer"):
        st.markdown(viz.budget_sentence(df, budget))
        st.caption(f"For scale: a Single-Task part ({widgets.SOURCES[source].lower()}) is "
                   f"{viz.fmt_bytes(full_part)} per task.")

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
        st.dataframe(viz.table_style(viz.accuracy_table(df, ctx.zoo.task_names)), key="to_table")
        st.download_button("Results (CSV)", results_csv(df).encode(), file_name="tradeoffs.csv",
                           mime="text/csv", key=state.TO_CSV, on_click="ignore")


with page.user_errors():
    rt = ctx.runtime
    c = st.columns([1, 3])
    with c[0]:
        source = widgets.source_picker(state.TO_SOURCE, rt)
    options = specs.method_options(source, ctx.zoo)
    with c[1]:
        # one multiselect per kind of fine-tune: their options differ (a shared key trimmed the choice to the
        # options both kinds have, e.g. Task Arithmetic alone, after a switch)
        methods = state.kept(st.multiselect, "Methods", key=state.for_source(state.TO_METHODS, source),
                             options=list(options), format_func=options.get, wrap=True,
                             default=[m for m in specs.default_methods(source) if m in options])
    keeps, ranks, scope = [], [], "global"
    knobs = st.columns([2, 1, 2])
    if any(m.startswith(("post-pruning", "peru-fft")) for m in methods):
        with knobs[0]:
            keeps = state.kept(st.multiselect, "m values (% of entries kept)", key=state.TO_KEEPS,
                               options=list(specs.KEEP_GRID), default=list(specs.DEFAULT_KEEPS),
                               format_func=lambda v: f"{v:g}%", wrap=True)
        with knobs[1]:
            scope = state.kept(st.radio, "Top-m% over", key=state.TO_SCOPE, options=["global", "per-tensor"],
                               index=0, horizontal=True, format_func={"global": "the whole vector",
                                                                      "per-tensor": "each tensor"}.get)
    if "peru-lora" in methods:
        grid = specs.rank_grid(widgets.lora_rank(rt, source))
        with knobs[2]:
            ranks = state.kept(st.multiselect, "q values (rank kept per matrix)",
                               key=state.for_source(state.TO_RANKS, source), options=grid, default=grid,
                               wrap=True)
    wanted = specs.sweep(source, methods, sorted(keeps), sorted(ranks), scope)
    todo = cache.missing(rt, wanted, ctx.zoo_hash)
    job_key = cache.job_key(rt, wanted)
    job = jobs.jobs().get(job_key) if todo else None
    running = job is not None and job.active
    clicked = st.button("Compute the missing settings", key=state.TO_COMPUTE, type="primary",
                        disabled=not todo or running,
                        help="Evaluates every setting of the sweep that the results store lacks.")
    if clicked and todo and not running:
        cache.submit(rt, todo, "Computing the sweep", key=job_key)
    done = [sp for sp in wanted if sp not in set(todo)]
    if todo:
        job = jobs.watch(job_key, "to")
        if job is None or not job.active:
            st.info(f"{len(done)} of {len(wanted)} settings are computed; press **Compute the missing settings** "
                    f"for the other {len(todo)} (each evaluates every task). The plots show what is computed.")
    if done:  # the sweep's views need computed settings; the planner and ablations below say what they lack
        sweep_views(ctx, cache.results(rt, done, ctx.zoo_hash), source)
    tradeoff_ablations.sections(ctx, source, methods, keeps, ranks, scope, options)
