"""The Trade-offs page's lower half: the budget planner and the paper's ablations (Table 10, Table 7 / B.3, Table 5),
one section each. Every number comes from the results store (held-out test accuracy, exact part-file bytes);
what is missing is said, with a button that computes it as a job (progress, Cancel, stored so a rerun is instant).

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from peru_core import ablations, experiments, fmt, planner, viz
from peru_core import viz_tradeoff_ablations as vta
from peru_core.experiments import available_sources
from peru_core.merging import get_method
from peru_core.spec import RunSpec, Source
from ui import cache, jobs, page, specs, state, widgets

# widget keys ("to_": bound to the URL like the page's other settings)
PL_FAMILY, PL_BUDGET, PL_COMPUTE = "to_plan_family", "to_plan_budget", "to_plan_compute"
T10_KEEPS, T10_COMPUTE = "to_t10_keeps", "to_t10_compute"
TC_MERGE, TC_KEEP, TC_CAP, TC_COMPUTE = "to_tc_merge", "to_tc_keep", "to_tc_cap", "to_tc_compute"
T5_KEEP, T5_MERGES, T5_COMPUTE = "to_t5_keep", "to_t5_merges", "to_t5_compute"
PLANNED = ("post-pruning", "peru-fft", "peru-lora")  # the method families with a per-task knob (m% or q)
SPARSE_KEEPS = tuple(k for k in specs.KEEP_GRID if k > 0)  # m = 0 keeps nothing: every variant is the shared model


def _run(rt, todo: Sequence[RunSpec], progress) -> None:
    """Compute and store run specs (the job's work; pages read the store afterwards)."""
    experiments.run_specs(rt, todo, store=cache.store(), on_progress=progress)


def _job(job_key: str, name: str, ready: bool, button_key: str, label: str, what: str, work, todo_text: str) -> bool:
    """The compute button, the job's progress and Cancel, and what is missing; True once the results are stored."""
    job = jobs.jobs().get(job_key) if not ready else None
    running = job is not None and job.active
    pressed = st.button(label, key=button_key, type="primary", disabled=ready or running, help=todo_text)
    if pressed and not ready and not running:
        jobs.jobs().submit(job_key, what, work)
    if ready:
        return True
    job = jobs.watch(job_key, name)
    if job is None or not job.active:
        st.info(f"Not computed yet: {todo_text} Press **{label}**.")
    return False


# ---------------------------------------------------------------- the budget planner
def _family(option: str) -> tuple[str, str | None]:
    kind, _, merge = option.partition(":")
    return kind, merge or None


@st.fragment
@page.guarded
def planner_section(ctx, source: str, methods: Sequence[str], keeps: Sequence[float], ranks: Sequence[int],
                    scope: str, options: dict[str, str]) -> None:
    rt = ctx.runtime
    st.subheader("Budget planner: a different m% or q per task")
    st.markdown("Tasks differ in how much accuracy each extra byte buys, so a total byte budget for all $T$ task "
                "parts can be spent unevenly: each task gets the setting that maximises the average accuracy, from "
                "its own measured accuracy-vs-setting curve (exact by dynamic programming over the computed grid; "
                "greedy on accuracy gained per extra byte), against the best single setting for every task.")
    families = [m for m in methods if _family(m)[0] in PLANNED]
    if not families:
        st.info("Pick Post-Pruning, PERU-FFT or PERU-LoRA among the **Methods** above: the planner allocates their "
                "m% (or q) per task.")
        return
    family = state.kept(st.radio, "Method to plan", key=state.for_source(PL_FAMILY, source), options=families,
                        format_func=options.get, index=0, horizontal=True)
    kind, _ = _family(family)
    knob, knob_name = ("rank", "q") if kind == "peru-lora" else ("keep", "m%")
    grid = [sp for sp in specs.sweep(source, [family], sorted(keeps), sorted(ranks), scope)
            if sp.mode.value == kind]
    if not grid:
        st.info(f"Pick {knob_name} values above: the planner chooses among them.")
        return
    todo = cache.missing(rt, grid, ctx.zoo_hash)
    done = [sp for sp in grid if sp not in set(todo)]
    if todo:
        what = f"{options[family]}: the planner's grid"
        _job(cache.job_key(rt, grid), "to_plan", False, PL_COMPUTE, "Compute the missing grid points", what,
             lambda progress: _run(rt, todo, progress),
             f"{len(done)} of {len(grid)} grid points of {options[family]} are computed (missing: "
             f"{', '.join(sp.label for sp in todo)}); the planner below uses the computed ones.")
    if not done:
        return
    rows = cache.results(rt, done, ctx.zoo_hash)
    curves = planner.curves_from_rows(rows, knob)
    labels = {t.name: t.label for t in ctx.zoo.tasks}
    curves = {labels.get(t, t): opts for t, opts in curves.items()}
    T = len(curves)
    least = sum(min(o.cost for o in v) for v in curves.values())
    most = sum(max(o.cost for o in v) for v in curves.values())
    uniform_all = planner.uniform_plans(curves)
    default = uniform_all[len(uniform_all) // 2].bytes if uniform_all else most
    budget_mb = state.kept(  # a narrow box; 6 decimals: a budget to the byte (1 MB = 10^6 bytes)
        st.columns([1, 2])[0].number_input, f"Byte budget for all {T} task parts (MB)",
        key=state.for_source(PL_BUDGET, family.replace(":", "_") + "_" + source), min_value=least / 1e6,
        max_value=most / 1e6, value=default / 1e6, step=max((most - least) / 1e6 / 50, 1e-6), format="%.6f",
        help="1 MB = 10^6 bytes. Bytes are the exact sizes of the task-part files (safetensors, header included) "
             f"of the computed grid: from {viz.fmt_bytes(least)} (every task at its cheapest setting) to "
             f"{viz.fmt_bytes(most)} (every task at its dearest).")
    budget = round(budget_mb * 1e6)  # whole bytes (the float MB carries rounding noise)
    pareto = planner.pareto_plans(curves, most)
    exact = max((p for p in pareto if p.bytes <= budget), key=lambda p: p.accuracy)
    greedy = planner.plan_greedy(curves, budget)
    uniform = planner.plan_uniform(curves, budget)
    m = st.columns(3)
    m[0].metric("Per-task allocation (exact)", fmt.pct_text(exact.accuracy),
                f"{viz.fmt_bytes(exact.bytes)} used", delta_color="off", delta_arrow="off")
    m[1].metric("Per-task allocation (greedy)", fmt.pct_text(greedy.accuracy),
                f"{viz.fmt_bytes(greedy.bytes)} used", delta_color="off", delta_arrow="off")
    m[2].metric(f"One {knob_name} for all tasks", fmt.pct_text(uniform.accuracy) if uniform else "none fits",
                f"{viz.fmt_bytes(uniform.bytes)} used" if uniform else None, delta_color="off", delta_arrow="off")
    st.caption(vta.planner_sentence(exact, greedy, uniform, budget, knob_name))
    table = planner.plan_table(exact, uniform, knob)
    st.dataframe(table.set_index("task"), key="to_plan_table", column_config={
        c: st.column_config.NumberColumn(c, format="%.2f") for c in table.columns if "accuracy" in c})
    st.caption(f"Bytes used = the sum of the {T} part files' sizes: {exact.bytes:,} bytes of a "
               f"{int(budget):,}-byte budget. Accuracies are measured on each task's held-out test set at the "
               f"chosen setting; nothing is interpolated.")
    greedy_curve = [planner.plan_greedy(curves, p.bytes) for p in pareto]
    st.plotly_chart(vta.planner_figure(pareto, greedy_curve, uniform_all, budget, knob_name,
                                       f"{options[family]}: average accuracy against the total budget"),
                    key="to_plan_chart")


def _has_full(rt, what: str) -> bool:
    """Whether every task has a full fine-tune; else says so (``what``: why the view needs them) and is False."""
    if Source.FULL in available_sources(rt):
        return True
    st.info(f"{what}: this zoo has no full fine-tune for every task.")
    return False


def _fft_keep(key: str) -> float:
    """The m% of PERU-FFT for a view (10% by default)."""
    return state.kept(st.selectbox, "PERU-FFT m", key=key, options=list(SPARSE_KEEPS),
                      index=list(SPARSE_KEEPS).index(10.0), format_func=lambda v: f"{v:g}%")


# ---------------------------------------------------------------- Table 10
@st.fragment
@page.guarded
def table10_section(ctx, scope: str) -> None:
    rt = ctx.runtime
    st.subheader("Prune θ_t itself, or its difference? (Table 10)")
    if not _has_full(rt, "Table 10 prunes full fine-tunes"):
        return
    st.markdown("Each task keeps the top-$m\\%$ entries by magnitude of one vector: $\\theta_t$ itself (zero "
                "elsewhere, nothing shared), $v_t = \\theta_t - \\theta_0$ added to the pre-trained model "
                "(Post-Pruning), or $u_t = \\theta_t - \\theta^*$ added to the Task Arithmetic merge (PERU-FFT).")
    keeps = sorted(state.kept(st.multiselect, "m values (% of entries kept)", key=T10_KEEPS,
                              options=list(SPARSE_KEEPS), default=[1.0, 5.0, 10.0],
                              format_func=lambda v: f"{v:g}%", wrap=True))
    if not keeps:
        st.info("Pick at least one m value.")
        return
    store = cache.store()
    ready = ablations.stored_table10(rt, keeps, store, scope)
    n = len(ctx.zoo.task_names)
    key = f"table10:{ctx.zoo_hash}:{rt.precision}:{scope}:{keeps}"
    if not _job(key, "to_t10", ready, T10_COMPUTE, "Compute Table 10", "Table 10 (pruning θ_t, v_t, u_t)",
                lambda progress: ablations.table10_rows(rt, keeps, cache.store(), scope, on_progress=progress),
                f"three variants at m = {', '.join(f'{k:g}%' for k in keeps)} on all {n} tasks' held-out test "
                "sets (rows already in the results store are reused)."):
        return
    rows = ablations.table10_rows(rt, keeps, store, scope)
    st.plotly_chart(vta.table10_figure(rows, "Average accuracy when each task keeps its top-m% of one vector"),
                    key="to_t10_chart")
    st.caption(vta.table10_sentence(rows) + f" Top-m% over {'the whole vector' if scope == 'global' else 'each tensor'}"
               " (the page's setting above).")


# ---------------------------------------------------------------- Table 7 / B.3: number of tasks
@st.fragment
@page.guarded
def task_count_section(ctx, scope: str) -> None:
    rt = ctx.runtime
    st.subheader("How many tasks can share one model? (Table 7 / Appendix B.3)")
    if not _has_full(rt, "This view merges full fine-tunes"):
        return
    names = ctx.zoo.task_names
    st.markdown("Subsets of the zoo's tasks, each merged from only its own fine-tunes and evaluated on its own "
                "tasks. The paper finds that the merge alone loses accuracy as $T$ grows while PERU-FFT's per-task "
                "parts hold it; the chart shows what this zoo does, with the merge at its registry defaults (at "
                "$T = 1$ a merge is not the fine-tune: Task Arithmetic gives $\\theta_0 + \\lambda v_t$).")
    c = st.columns([2, 1, 1])
    with c[0]:
        methods = widgets.usable_methods(ctx.zoo)
        mnames = [m.name for m in methods]
        merge = state.kept(st.selectbox, "Merge", key=TC_MERGE, options=mnames,
                           index=mnames.index(widgets.DEFAULT_MERGE) if widgets.DEFAULT_MERGE in mnames else 0,
                           format_func={m.name: m.label for m in methods}.get,
                           help="At its registry defaults; PERU-FFT adds the top-m% of u_t on top of it.")
    with c[1]:
        keep = _fft_keep(TC_KEEP)
    with c[2]:
        cap = int(state.kept(st.number_input, "Subsets per T (at most)", key=TC_CAP, min_value=1, max_value=50,
                             value=3, step=1, help="All subsets of a size when there are this many or fewer, else "
                                                   "this many drawn with a fixed seed (the same on every run)."))
    params = get_method(merge).defaults()
    run = [RunSpec.make("merge", "full", merge, params),
           RunSpec.make("peru-fft", "full", merge, params, keep=keep, scope=scope)]
    subsets = ablations.task_subsets(names, range(1, len(names) + 1), cap)
    store = cache.store()
    ready = all(ablations.stored_subset(rt, sp, s, store) for s in subsets for sp in run)
    evals = sum(len(s) for s in subsets) * len(run)
    key = f"subsets:{ctx.zoo_hash}:{rt.precision}:{'|'.join(sp.key() for sp in run)}:{subsets}"
    if not _job(key, "to_tc", ready, TC_COMPUTE, "Compute the subsets", "Number of tasks (Table 7)",
                lambda progress: ablations.run_subsets(rt, run, subsets, cache.store(), progress),
                f"{len(subsets)} subsets of T = 1 to {len(names)} tasks, each merged from its own fine-tunes, "
                f"{evals} evaluations on held-out test sets (stored ones are reused)."):
        return
    rows = ablations.run_subsets(rt, run, subsets, store)
    curve = ablations.by_task_count(rows)
    st.plotly_chart(vta.task_count_figure(curve, ablations.subset_means(rows),
                                          "Average accuracy over the merged tasks against their number T"),
                    key="to_tc_chart")
    st.caption(vta.task_count_sentence(curve) + f" Held-out test data; subsets per T: {cap} at most (seeded draw).")


# ---------------------------------------------------------------- Table 5: PERU-FFT on every merge
@st.fragment
@page.guarded
def table5_section(ctx, scope: str) -> None:
    rt = ctx.runtime
    st.subheader("PERU-FFT on top of every merge (Table 5)")
    if not _has_full(rt, "PERU-FFT reuses full fine-tunes"):
        return
    methods = widgets.usable_methods(ctx.zoo)
    c = st.columns([1, 3])
    with c[0]:
        keep = _fft_keep(T5_KEEP)
    with c[1]:
        merges = state.kept(st.multiselect, "Merges", key=T5_MERGES, options=[m.name for m in methods],
                            default=[m.name for m in methods if not m.test_time],
                            format_func={m.name: m.label for m in methods}.get, wrap=True,
                            help="Every registered merge this zoo can run, at its registry defaults (merges that "
                                 "train at test time are offered, not preselected).")
    if any(m.test_time for m in methods if m.name in merges):
        st.warning(widgets.TEST_TIME_WARNING, icon=":material/warning:")
    if not merges:
        st.info("Pick at least one merge.")
        return
    run = ablations.table5_specs(keep, merges, "full", scope)
    todo = cache.missing(rt, run, ctx.zoo_hash)
    n = len(ctx.zoo.task_names)
    if not _job(cache.job_key(rt, run), "to_t5", not todo, T5_COMPUTE, "Compute Table 5",
                f"Table 5 (PERU-FFT {keep:g}% on {len(merges)} merges)",
                lambda progress: _run(rt, todo, progress),
                f"{len(todo)} of {len(run)} settings are missing ({len(todo) * n} evaluations on held-out test "
                "sets)."):
        return
    summary = viz.summary(cache.results(rt, run, ctx.zoo_hash))
    st.plotly_chart(vta.table5_figure(summary, keep, f"Each merge alone and with PERU-FFT {keep:g}% on top"),
                    key="to_t5_chart")
    st.caption(vta.table5_sentence(summary, keep) + f" Average over {n} tasks.")


def sections(ctx, source: str, methods: Sequence[str], keeps: Sequence[float], ranks: Sequence[int], scope: str,
             options: dict[str, str]) -> None:
    """The planner and the three ablations, one tab each."""
    st.header("Budget planner and ablations")
    tabs = st.tabs(["Budget planner", "Table 10: prune θ_t", "Table 7: number of tasks", "Table 5: every merge"])
    with tabs[0]:
        planner_section(ctx, source, methods, keeps, ranks, scope, options)
    with tabs[1]:
        table10_section(ctx, scope)
    with tabs[2]:
        task_count_section(ctx, scope)
    with tabs[3]:
        table5_section(ctx, scope)
