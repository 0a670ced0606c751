"""Embeddings: t-SNE of one task's test features under several methods, side by side, with cluster quality.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from peru_core import viz
from peru_core.spec import RunSpec
from ui import page, sidebar, specs, state, widgets

page.setup("Embeddings", ":material/scatter_plot:")
ctx = sidebar.context()
page.intro(
    "Embeddings",
    "Each panel embeds the same test images of one task (20 per class, as in the paper) with one method's image "
    "encoder, then maps the features to 2-D with t-SNE (same seed, same perplexity in every panel). Tight, "
    "well-separated colour clusters mean the features tell the classes apart; under each panel, the silhouette "
    "and the leave-one-out k-NN accuracy measure that on the features themselves.",
    r"s(i) = \frac{b(i) - a(i)}{\max\{a(i),\, b(i)\}}\ \text{(cosine distances: } a \text{ own class, } b "
    r"\text{ nearest other class)},\qquad \text{k-NN acc} = \frac{1}{n}\sum_i [\hat y_{k\text{-NN}}(i) = y_i]",
    "Figures 3 (full fine-tunes) and 4 (LoRA fine-tunes)",
)


@st.cache_data(show_spinner="Features of every panel's model, then one t-SNE per panel…", max_entries=32)
def tsne_panels(zoo_hash: str, task: str, keys: tuple[str, ...], per_class: int, perplexity: float, seed: int,
                _rt) -> tuple[pd.DataFrame, pd.DataFrame]:
    """t-SNE points and cluster quality of each panel (features of the same sampled test images)."""
    from peru_core import embed, experiments

    # the same sampled test images in every panel: only those are encoded
    idx = embed.sample_per_class(_rt.data(task)[1].numpy(), per_class, seed)
    feats, labels = {}, None
    for key in keys:
        spec = RunSpec.from_key(key)
        feats[spec.label], labels = _rt.features(experiments.task_model(_rt, spec, task), task, index=idx)
    return embed.embed_panels(feats, labels, _rt.spec(task).classes, perplexity=perplexity, seed=seed)


with page.user_errors():
    rt = ctx.runtime
    c = st.columns([1, 1, 2])
    with c[0]:
        task = state.kept(st.selectbox, "Task", key=state.EM_TASK, options=ctx.zoo.task_names, index=0,
                          format_func=lambda n: ctx.zoo.task(n).label)
        source = widgets.source_picker(state.EM_SOURCE, rt)
    options = specs.panel_options(source, ctx.zoo)
    with c[2]:
        chosen = state.kept(st.multiselect, "Panels", key=state.EM_METHODS, options=list(options),
                            format_func=options.get,
                            default=[o for o in specs.default_panels(source, ctx.zoo) if o in options])
        keep = rank = None
        if any(o.startswith(("post-pruning", "peru-fft")) for o in chosen):
            keep = widgets.keep_slider(state.EM_KEEP)
        if "peru-lora" in chosen:
            r = widgets.lora_rank(rt)
            rank = widgets.rank_slider(state.EM_RANK, r, value=16)  # clamped to r
    with c[1]:
        per_class = state.kept(st.slider, "Images per class", key=state.EM_PER_CLASS, min_value=5, max_value=100,
                               value=20, step=5)
        perplexity = state.kept(st.slider, "Perplexity", key=state.EM_PERPLEXITY, min_value=5.0, max_value=50.0,
                                value=30.0, step=1.0, help="Same in every panel; clamped below n/3.")
        seed = int(state.kept(st.number_input, "Seed", key=state.EM_SEED, min_value=0, max_value=2**31 - 1,
                              value=0, step=1))
    if not chosen:
        st.info("Pick at least one panel.")
        st.stop()
    keys = tuple(specs.panel(o, source, keep, rank).key() for o in chosen)
    config = (ctx.zoo_hash, task, keys, per_class, perplexity, seed)
    if st.button("Compute t-SNE", key=state.EM_COMPUTE, type="primary"):
        st.session_state["_em_config"] = config
    if st.session_state.get("_em_config") != config:
        st.info(f"Press **Compute t-SNE** to embed {len(keys)} panels "
                f"(the features of every method, then one t-SNE per panel).")
        st.stop()
    points, quality = tsne_panels(*config, rt)
    classes = list(rt.spec(task).classes)
    labels = [RunSpec.from_key(k).label for k in keys]
    families = {RunSpec.from_key(k).label: RunSpec.from_key(k).method_label for k in keys}
    quality = quality.assign(method=quality["panel"].map(families))
    grid = st.columns(3)
    for i, lab in enumerate(labels):
        with grid[i % 3]:
            st.plotly_chart(viz.tsne_scatter(points[points["panel"] == lab], lab, classes), key=f"em_panel_{i}")
            q = quality[quality["panel"] == lab].iloc[0]
            m = st.columns(2)
            m[0].metric("silhouette", f"{q['silhouette']:.3f}")
            m[1].metric("5-NN accuracy", f"{q['knn_accuracy'] * 100:.1f}%")
    st.subheader("Cluster quality")
    st.plotly_chart(viz.cluster_quality_bars(quality), key="em_quality")
