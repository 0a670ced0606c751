"""Spectra: why a few singular directions (LoRA) or a few large entries (full fine-tunes) carry a task.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from peru_core import fmt, viz, viz_ablations
from peru_core.spec import Mode, RunSpec
from ui import cache, jobs, page, sidebar, state, widgets

# widget keys of the ablation views ("sp_": bound to the URL like the page's other settings)
SIM_SOURCE, SIM_LAYER = "sp_sim_source", "sp_sim_layer"
LAYOUT_METHOD, LAYOUT_KEEP, LAYOUT_PREFIX, LAYOUT_RANK, LAYOUT_VALUE = (
    "sp_lay_method", "sp_lay_keep", "sp_lay", "sp_lay_rank", "sp_lay_value")
T6_SOURCE, T6_COMPUTE = "sp_t6_source", "sp_t6_compute"

page.setup("Spectra", ":material/equalizer:")
ctx = sidebar.context()
page.intro(
    "Spectra",
    "PERU-LoRA keeps the top-$q$ singular values $s_i$ of each LoRA update, so how fast they fall decides how "
    "small $q$ can be: the kept energy $E(q)$ and the relative error below are exact for the truncation. The same "
    "view for the full fine-tunes' task-vector matrices shows why they are not low-rank, and the histogram of "
    "$|u_t|$ shows how few large entries the top-$m\\%$ threshold keeps.",
    # two lines: on one, the formula is wider than the page at 1024 and 1280 px and gets cut
    r"\begin{gathered}\Delta_t = s\,B_t A_t = U \Sigma V^\top,\qquad E(q) = \frac{\sum_{i \le q} s_i^2}"
    r"{\sum_i s_i^2}\\ \frac{\lVert \Delta_t - U_q \Sigma_q V_q^\top \rVert_F}{\lVert \Delta_t \rVert_F} = "
    r"\sqrt{1 - E(q)}\end{gathered}",
    "Section 3.2 and Figure 6 (PERU-LoRA's rank q) and Figure 7 (the top-m% of u_t)",
)


def _tidy(spectra: dict[str, np.ndarray], task: str, prefix: str) -> pd.DataFrame:
    """Tidy rows, each matrix under its readable name ("block 2 · attention in-proj (q, k, v)")."""
    return pd.DataFrame([{"task": task, "layer": viz.layer_name(k, prefix), "key": k, "index": i + 1,
                          "sigma": float(s)} for k, sv in spectra.items() for i, s in enumerate(sv)])


@st.cache_data(show_spinner="Singular values of the LoRA products…", max_entries=64)
def lora_spectra(zoo_hash: str, task: str, _rt, kind: str = "lora") -> pd.DataFrame:
    from peru_core.lowrank import lora_spectra as spectra

    return _tidy(spectra(_rt.adapter(task, kind)), task, _rt.prefix)


@st.cache_data(show_spinner="Singular values of the task-vector matrices…", max_entries=64)
def full_spectra(zoo_hash: str, task: str, _rt) -> pd.DataFrame:
    from peru_core.lowrank import task_vector_spectra

    return _tidy(task_vector_spectra(_rt.base_state(), _rt.finetuned(task), device=_rt.device), task, _rt.prefix)


@st.cache_data(show_spinner="Top-m% threshold of the task vector…", max_entries=64)
def magnitudes(zoo_hash: str, task: str, merge_key: str | None, keep: float, _rt):
    """The |u_t| histogram (or |v_t| without a merge) and what the top-m% keeps."""
    from peru_core import experiments
    from peru_core.sparse import keep_count, kth_largest_abs
    from peru_core.statedict import Layout, flat_difference

    shared = experiments.task_model(_rt, RunSpec.from_key(merge_key), task) if merge_key else _rt.base_state()
    ft = _rt.finetuned(task)
    u = flat_difference(ft, shared, Layout.of(ft)).numpy()
    k = keep_count(u.size, keep)
    thr = kth_largest_abs(u, k) if k > 0 else float(np.abs(u).max()) * 2 + 1.0
    energy = float(np.square(u[np.abs(u) >= thr], dtype=np.float64).sum() / max(np.square(u, dtype=np.float64).sum(),
                                                                               1e-30))
    return viz.magnitude_histogram(u, thr), thr, k, u.size, energy


def energy_view(df: pd.DataFrame, q: int, layer: str, key: str) -> None:
    curves = pd.concat([viz.energy_curves(df, by=None).assign(group="all layers"),
                        viz.energy_curves(df[df["layer"] == layer], by=None).assign(group=layer)])
    st.plotly_chart(viz.energy_figure(curves, q, by="group"), key=key)
    row = curves[(curves["group"] == "all layers") & (curves["q"] == q)]
    if not row.empty:
        st.caption(f"At q={q}, the truncation keeps {fmt.pct_text(row['energy'].iloc[0])} of the squared norm of "
                   f"all layers (relative error {row['relative error'].iloc[0]:.3f}).")


def spectrum_view(df, name: str, rank_key: str, layer_key: str, layer_index: int = 0,
                  rank_label: str | None = None) -> None:
    """Singular values of every layer with the kept rank q marked, then the energy view of one layer."""
    layers = list(dict.fromkeys(df["layer"]))
    c = st.columns(2)
    with c[0]:
        kwargs = {"label": rank_label} if rank_label else {}
        q = widgets.rank_slider(rank_key, int(df["index"].max()), value=4, **kwargs)
    with c[1]:
        layer = state.kept(st.selectbox, "Layer", key=layer_key, options=layers, index=layer_index)
    fig = viz.spectrum(df, color="layer", highlight=layer)  # every line named in the legend; the picked one thicker
    fig.add_vline(x=q, line_dash="dash", line_color="black")
    st.plotly_chart(fig, key=f"sp_{name}_spectrum")
    energy_view(df, q, layer, f"sp_{name}_energy")


def _adapter_section(rt, task: str, kind: str) -> None:
    suffix = "" if kind == "lora" else f"_{kind}"  # one widget set per adapter kind
    st.subheader(f"Singular values of the {'LoRA' if kind == 'lora' else 'L-LoRA'} products")
    spectrum_view(lora_spectra(ctx.zoo_hash, task, rt, kind), kind, state.SP_RANK + suffix,
                  state.SP_LAYER + suffix)


@st.fragment
@page.guarded
def lora_section(rt, task: str) -> None:
    _adapter_section(rt, task, "lora")


@st.fragment
@page.guarded
def llora_section(rt, task: str) -> None:
    _adapter_section(rt, task, "llora")


@st.fragment
@page.guarded
def full_section(rt, task: str) -> None:
    st.subheader("Singular values of the full task-vector matrices")
    tuned = sum(v.numel() for v in rt.base_state().values())
    if tuned > 20_000_000 and not st.toggle("Compute the dense SVDs (about a second per matrix on a CPU)",
                                            key="sp_full_go"):
        st.info("Full task vectors need one dense SVD per matrix; switch the toggle on to compute them.")
        return
    df = full_spectra(ctx.zoo_hash, task, rt)
    blocks = [i for i, name in enumerate(dict.fromkeys(df["layer"])) if name.startswith("block")]
    spectrum_view(df, "full", state.SP_FULL_RANK, state.SP_FULL_LAYER, blocks[0] if blocks else 0,
                  "q: rank kept per matrix (a truncated SVD)")


@st.fragment
@page.guarded
def magnitude_section(rt, task: str) -> None:
    st.subheader("|u_t| and the top-m% threshold")
    c = st.columns(2)
    with c[0]:
        names = {"u": "u_t = θ_t − θ* (PERU-FFT)", "v": "v_t = θ_t − θ_0 (Post-Pruning)"}
        vector = state.kept(st.radio, "Vector", key=state.SP_VECTOR, options=list(names), index=0,
                            format_func=names.get)
        keep = widgets.keep_slider(state.SP_KEEP)
    merge_key = None
    if vector == "u":
        with c[1]:
            merge, params = widgets.merge_picker("sp", ctx.zoo)
        merge_key = RunSpec.make("merge", "full", merge, params).key()
    fig, thr, k, d, energy = magnitudes(ctx.zoo_hash, task, merge_key, keep, rt)
    m = st.columns(3)  # short values, one per column: a long one is cut at 1024 px
    m[0].metric("Threshold |entry|", viz.fmt_sci(thr) if k else "none kept")
    m[1].metric(f"Entries kept (of {viz.fmt_count(d)})", viz.fmt_count(k))
    m[2].metric("Squared norm kept", fmt.pct_text(energy))
    st.plotly_chart(fig, key="sp_histogram")


# ---------------------------------------------------------------- task-vector similarity
@st.cache_data(show_spinner="Inner products of the task vectors…", max_entries=16)
def grams(zoo_hash: str, source: str, _rt):
    from peru_core import similarity

    names = _rt.zoo.task_names
    if source == "full":
        return similarity.task_vector_grams(_rt.base_state(), {t: _rt.finetuned(t) for t in names})
    return similarity.adapter_grams({t: _rt.adapter(t, source) for t in names})


@st.fragment
@page.guarded
def similarity_section(rt) -> None:
    st.subheader("Task-vector similarity")
    c = st.columns(2)
    with c[0]:
        source = widgets.source_picker(SIM_SOURCE, rt)
    g = grams(ctx.zoo_hash, source, rt)
    layers = {"": "all layers (flattened)", **{k: viz.layer_name(k, rt.prefix) for k in g.keys}}
    with c[1]:
        key = state.kept(st.selectbox, "Layer", key=state.for_source(SIM_LAYER, source), options=list(layers),
                         format_func=layers.get, index=0)
    labels = [ctx.zoo.task(n).label for n in g.names]
    what = ("θ_t − θ_0" if source == "full" else "the products s·B A folded to full updates (not the factors)")
    cos = g.cosines(key or None)
    st.plotly_chart(viz_ablations.cosine_heatmap(labels, cos, f"Cosine of the task vectors: {layers[key]}"),
                    key="sp_sim_heatmap")
    st.caption(viz_ablations.similarity_sentence(labels, cos, f"{widgets.SOURCES[source]}, "
                                                 f"{layers[key]}") + f" Task vectors: {what}.")


# ---------------------------------------------------------------- where the task part lives
@st.cache_data(show_spinner="Counting the kept entries per layer…", max_entries=64)
def part_layout(zoo_hash: str, task: str, spec_key: str, _rt) -> pd.DataFrame:
    from peru_core.part_layout import task_part_layout

    return task_part_layout(_rt, RunSpec.from_key(spec_key), task)


LAYOUT_METHODS = {"peru-fft": "PERU-FFT (top-m% of u_t)", "post-pruning": "Post-Pruning (top-m% of v_t)",
                  "tall": "TALL mask (default parameters)", "emr": "EMR-Merging mask (default parameters)",
                  "lora": "PERU-LoRA (rank q of LoRA)", "llora": "PERU-LoRA (rank q of L-LoRA)"}
MASK_MODES = tuple(m.value for m in Mode if m.value in ("tall", "emr"))  # the reuse methods with per-task masks


@st.fragment
@page.guarded
def layout_section(rt, task: str) -> None:
    st.subheader("Where the task part lives")
    from peru_core.experiments import available_sources

    have = {s.value for s in available_sources(rt)}
    sparse = ("peru-fft", "post-pruning", *MASK_MODES)
    options = [m for m in LAYOUT_METHODS if m in have or (m in sparse and "full" in have)]
    if not options:
        st.info("This zoo has no fine-tune kind for every task, so no task part to show.")
        return
    c = st.columns(2)
    with c[0]:
        method = state.kept(st.radio, "Method", key=LAYOUT_METHOD, options=options, format_func=LAYOUT_METHODS.get,
                            index=0)
    with c[1]:
        if method in ("peru-fft", "post-pruning"):
            keep = widgets.keep_slider(LAYOUT_KEEP)
            merge, params = widgets.merge_picker(LAYOUT_PREFIX, ctx.zoo) if method == "peru-fft" else (None, None)
            spec = RunSpec.make(method, "full", merge, params, keep=keep)
        elif method in MASK_MODES:
            spec = RunSpec.make(method, "full")
        else:
            q = widgets.rank_slider(state.for_source(LAYOUT_RANK, method), widgets.lora_rank(rt, method), value=4)
            spec = RunSpec.make("peru-lora", method, rank=q)
    df = part_layout(ctx.zoo_hash, task, spec.key(), rt)
    label = ctx.zoo.task(task).label
    if spec.mode.value == "peru-lora":
        fig = viz_ablations.layout_bars(df, "kept", f"{spec.label}: {label}, rank kept per matrix",
                                        "rank q kept (singular directions; the adapter has r per matrix)")
        st.plotly_chart(fig, key="sp_layout_bars")
        st.caption(viz_ablations.layout_sentence(df, sparse=False) + " PERU-LoRA keeps the same q on every "
                   "adapted matrix (fewer where the product's rank is lower).")
        return
    units = {"fraction": "kept, % of the tensor's own entries", "share": "share of the task part's kept entries (%)"}
    value = state.kept(st.radio, "Bar length", key=LAYOUT_VALUE, options=list(units), format_func=units.get,
                       index=0, horizontal=True)
    scope = "" if spec.mode.value in MASK_MODES else " (global)"
    fig = viz_ablations.layout_bars(df, value, f"{spec.label}{scope}: {label}", units[value])
    st.plotly_chart(fig, key="sp_layout_bars")
    how = (" A task's mask marks the entries of the shared task vector it uses." if scope == "" else
           " One global top-m% over the whole tuned part: the budget goes where the entries moved most.")
    st.caption(viz_ablations.layout_sentence(df, sparse=True) + how)


# ---------------------------------------------------------------- Table 6: truncate the factors or the product
@st.cache_data(show_spinner="Truncating the factors and the products…", max_entries=64)
def truncation_errors(zoo_hash: str, task: str, source: str, ranks: tuple[int, ...], _rt) -> pd.DataFrame:
    from peru_core.factor_truncation import relative_errors

    return relative_errors(_rt.adapter(task, source), ranks)


@st.fragment
@page.guarded
def table6_section(rt, task: str) -> None:
    from peru_core import factor_truncation as ft
    from peru_core.experiments import available_sources

    st.subheader("Truncate each factor, or the product? (Table 6)")
    kinds = [s.value for s in available_sources(rt) if s.is_adapter]
    if not kinds:
        st.info("Table 6 truncates LoRA factors: this zoo has no LoRA or L-LoRA adapter for every task. Full "
                "fine-tunes have no factors to truncate.")
        return
    source = state.kept(st.radio, "Adapters", key=T6_SOURCE, options=kinds, format_func=widgets.SOURCES.get,
                        index=0, horizontal=True)
    ranks = tuple(ft.default_ranks(widgets.lora_rank(rt, source)))
    label = ctx.zoo.task(task).label
    errors = truncation_errors(ctx.zoo_hash, task, source, ranks, rt)
    st.plotly_chart(viz_ablations.truncation_error_figure(errors, f"Reconstruction error of the update: {label}"),
                    key="sp_t6_error")
    st.caption(viz_ablations.truncation_sentence(errors))
    store = cache.store()
    acc = ft.stored_accuracies(rt, source, ranks, store)
    job_key = f"table6:{ctx.zoo_hash}:{source}:{ranks}"
    job = jobs.jobs().get(job_key) if acc is None else None
    running = job is not None and job.active
    n = len(ctx.zoo.task_names)
    if st.button("Compute accuracies", key=T6_COMPUTE, type="primary", disabled=acc is not None or running,
                 help=f"Evaluates both variants at q = {', '.join(map(str, ranks))} on all {n} tasks' held-out "
                      "test sets; kept in the results store."):
        if acc is None and not running:
            jobs.jobs().submit(job_key, f"Table 6 on {widgets.SOURCES[source]}",
                               lambda progress: ft.accuracies(rt, source, ranks, cache.store(), progress))
    if acc is None:
        job = jobs.watch(job_key, "sp_t6")
        if job is None or not job.active:
            st.info(f"Press **Compute accuracies** to evaluate both variants at q = {', '.join(map(str, ranks))} "
                    f"on all {n} tasks ({2 * len(ranks) * n} evaluations; PERU-LoRA rows already in the results "
                    "store are reused).")
        return
    fig = viz_ablations.truncation_accuracy_figure(acc, task, label, "Held-out accuracy at the same q")
    st.plotly_chart(fig, key="sp_t6_accuracy")
    st.caption(viz_ablations.accuracy_sentence(acc))


with page.user_errors():
    rt = ctx.runtime
    task = state.kept(st.selectbox, "Task", key=state.SP_TASK, options=ctx.zoo.task_names, index=0,
                      format_func=lambda n: ctx.zoo.task(n).label)
    spec = ctx.zoo.task(task)
    has_lora, has_llora, has_full = spec.lora is not None, spec.llora is not None, spec.finetuned is not None
    # short labels: seven long ones overflow the tab bar at 1024 px (each section opens with its own heading)
    tabs = st.tabs(["LoRA", "L-LoRA", "Full", "|u_t| top-m%", "Similarity", "Per layer", "Table 6"])
    for tab, ok, section, lack in ((tabs[0], has_lora, lora_section, "a LoRA adapter"),
                                   (tabs[1], has_llora, llora_section, "an L-LoRA adapter"),
                                   (tabs[2], has_full, full_section, "a full fine-tune"),
                                   (tabs[3], has_full, magnitude_section, "a full fine-tune")):
        with tab:
            if ok:
                section(rt, task)
            else:
                st.info(f"Task {task!r} has no {lack} in this zoo.")
    with tabs[4]:
        similarity_section(rt)
    with tabs[5]:
        layout_section(rt, task)
    with tabs[6]:
        table6_section(rt, task)
