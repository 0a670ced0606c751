"""Merge lab: merge the zoo's fine-tunes with any registered method, add a task part, see what each task keeps.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import streamlit as st

from peru_core import fmt, viz
from ui import cache, jobs, page, sidebar, specs, state, widgets
from ui.downloads import downloads
from ui.estimate_view import CAPTION as ESTIMATE_CAPTION, estimate_table

ESTIMATE_WAIT_S = 2.0  # at most this long the run that starts a job waits for its quick estimates before drawing
STARTED = "_lab_started"  # session key: the job key started by this session's last press or auto-compute


def start(rt, todo: list, label: str, job_key: str) -> jobs.Job:
    """Start computing ``todo`` (quick estimates first) and note it for this session's next run."""
    job = cache.submit(rt, todo, f"Computing {label}", key=job_key, estimates=True)
    st.session_state["_lab_auto_job"] = job_key
    st.session_state[STARTED] = job_key
    return job

page.setup("Merge lab", ":material/science:")
ctx = sidebar.context()
page.intro(
    "Merge lab",
    "A merge builds **one** model $\\theta^*$ for all tasks; each row of the table is a way of serving task $t$. "
    "Post-Pruning and PERU-FFT add the top-$m\\%$ entries (by magnitude) of a task's difference to the shared "
    "model; PERU-LoRA keeps the top-$q$ singular directions of each LoRA update. Read the table across: the closer a "
    "row's average gets to Single-Task for few extra bytes per task, the better.",
    r"\begin{aligned} \text{Task Arithmetic: }& \theta^* = \theta_0 + \lambda \textstyle\sum_{t=1}^T v_t \\ "
    r"\text{PERU-FFT: }& \theta^* + \operatorname{top}_{m\%}(\theta_t - \theta^*) \\ "
    r"\text{Post-Pruning: }& \theta_0 + \operatorname{top}_{m\%}(v_t) \end{aligned}",
    "Table 1 (one row per method) and Figures 1 and 2",
)

with page.user_errors():
    rt = ctx.runtime
    left, right = st.columns([1.2, 2], gap="large")
    with left:
        source = widgets.source_picker(state.LAB_SOURCE, rt)
        modes = specs.REUSE_MODES[source]
        # one radio per kind of fine-tune: their options differ, and a choice made for one never blanks another
        mode = state.kept(st.radio, "Task-specific part", key=state.for_source(state.LAB_MODE, source),
                          options=list(modes), format_func=modes.get, index=len(modes) - 1)
        merge, params = None, {}
        if specs.uses_merge(mode):  # Post-Pruning and PERU-LoRA start from theta_0: no merge to pick
            merge, params = widgets.merge_picker("lab", ctx.zoo)
        elif specs.part_method(mode) is not None:  # TALL / EMR: the knobs of their registry entry
            params = widgets.param_sliders("lab", specs.part_method(mode))
        keep = rank = None
        scope = "global"
        if mode in ("post-pruning", "peru-fft"):
            keep = widgets.keep_slider(state.LAB_KEEP)
            scope = state.kept(st.radio, "Top-m% over", key=state.LAB_SCOPE, options=["global", "per-tensor"],
                               index=0, horizontal=True, format_func={"global": "the whole vector",
                                                                      "per-tensor": "each tensor"}.get)
        elif mode == "peru-lora":
            rank = widgets.rank_slider(state.for_source(state.LAB_RANK, source), widgets.lora_rank(rt, source))
        wanted = specs.lab(source, merge, params, mode, keep, rank, scope)
        todo = cache.missing(rt, wanted, ctx.zoo_hash)
        job_key = cache.job_key(rt, wanted)
        job = jobs.jobs().get(job_key) if todo else None
        running = job is not None and job.active
        auto = state.kept(st.toggle, "Auto-compute", key=state.LAB_AUTO, value=False,
                          help="Compute each new setting as soon as a slider moves (seconds on the demo zoo).")
        retry = job is None or job.state not in (jobs.CANCELLED, jobs.FAILED)  # auto never restarts a cancel
        if todo and not running and auto and retry:  # before the button, so it is drawn disabled
            previous = jobs.jobs().get(st.session_state.get("_lab_auto_job", ""))
            if previous is not None and previous.key != job_key:
                previous.cancel()  # a slider moved on: the setting it was computing is no longer asked for
            job, running = start(rt, todo, wanted[-1].label, job_key), True
        # a press starts the job in the button's callback, before this script runs again: the run it triggers then
        # finds the job and draws the button disabled
        st.button("Compute", key=state.LAB_COMPUTE, type="primary", disabled=not todo or running, on_click=start,
                  args=(rt, todo, wanted[-1].label, job_key))
    with right:
        if st.session_state.pop(STARTED, None) == job_key and job is not None:
            # draw the estimates in the run that started the job: no poll to wait for, no second rerun, and no page
            # drawn meanwhile to slow the job down (under a second on the demo zoo; a larger zoo shows its progress)
            if not jobs.wait_for_news(job, lambda: cache.estimated(rt, wanted) is not None, ESTIMATE_WAIT_S):
                st.rerun()  # it finished meanwhile (a small zoo): show its results
        if todo:
            job = jobs.watch(job_key, "lab")
            # quick estimates, while the same job evaluates the full test sets (the page reruns when they land)
            partial = cache.estimated(rt, wanted) if job is not None and job.active else None
            if partial is not None:
                st.subheader(wanted[-1].label)
                with st.container(key="lab_estimate"):
                    st.table(estimate_table(partial, ctx.zoo.task_names))
                st.caption(ESTIMATE_CAPTION)
                st.stop()
            if job is None or not job.active:
                st.info(f"**{wanted[-1].label}** is not computed yet: press **Compute** "
                        f"({len(todo)} setting{'s' if len(todo) > 1 else ''} to evaluate on "
                        f"{len(ctx.zoo.tasks)} tasks).")
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
            # each metric as wide as its text, wrapping to a new row when the column is narrow (equal columns
            # cut "89.60%" to "89.6..." at 1024 px)
            with st.container(horizontal=True, gap="large"):
                st.metric("Average accuracy", fmt.pct_text(chosen["accuracy"]),
                          f"{fmt.points_text(chosen['accuracy'] - single['accuracy'].iloc[0])} vs Single-Task",
                          delta_color="off", delta_arrow="off", width="content")
                st.metric("Extra per task", viz.fmt_bytes(chosen["task_bytes"]),
                          f"{viz.fmt_count(chosen['task_params'])} params", delta_color="off", delta_arrow="off",
                          width="content")
                st.metric("Total (shared + T x task)", viz.fmt_bytes(chosen["bytes"]),
                          f"{viz.fmt_count(chosen['params'])} params", delta_color="off", delta_arrow="off",
                          width="content")
        st.plotly_chart(viz.task_bars(df, height=340), key="lab_bars")
    with st.container(key="lab_table"):
        table = viz.accuracy_table(df, ctx.zoo.task_names)
        st.table(viz.table_style(table))
    downloads(rt, wanted[-1], df, prefix="lab")
