"""Spectra: why a few singular directions (LoRA) or a few large entries (full fine-tunes) carry a task.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from peru_core import fmt, viz
from peru_core.spec import RunSpec
from ui import page, sidebar, state, widgets

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


with page.user_errors():
    rt = ctx.runtime
    task = state.kept(st.selectbox, "Task", key=state.SP_TASK, options=ctx.zoo.task_names, index=0,
                      format_func=lambda n: ctx.zoo.task(n).label)
    spec = ctx.zoo.task(task)
    has_lora, has_llora, has_full = spec.lora is not None, spec.llora is not None, spec.finetuned is not None
    tabs = st.tabs(["LoRA products", "L-LoRA products", "Full task vectors", "|u_t| and the top-m% threshold"])
    for tab, ok, section, lack in ((tabs[0], has_lora, lora_section, "a LoRA adapter"),
                                   (tabs[1], has_llora, llora_section, "an L-LoRA adapter"),
                                   (tabs[2], has_full, full_section, "a full fine-tune"),
                                   (tabs[3], has_full, magnitude_section, "a full fine-tune")):
        with tab:
            if ok:
                section(rt, task)
            else:
                st.info(f"Task {task!r} has no {lack} in this zoo.")
