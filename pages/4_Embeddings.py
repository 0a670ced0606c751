"""Embeddings: t-SNE of one task's test features under several methods, side by side, with cluster quality.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from peru_core import fmt, viz
from peru_core.spec import RunSpec
from ui import cache, jobs, page, sidebar, specs, state, widgets

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


def tsne_panels(rt, task: str, keys: tuple[str, ...], per_class: int, perplexity: float, seed: int,
                progress) -> tuple[pd.DataFrame, pd.DataFrame]:
    """t-SNE points and cluster quality of each panel (features of the same sampled test images)."""
    from peru_core import embed, experiments

    # the same sampled test images in every panel: only those are encoded
    idx = embed.sample_per_class(rt.data(task)[1].numpy(), per_class, seed)
    points, quality, n = [], [], len(keys)
    for i, key in enumerate(keys):
        spec = RunSpec.from_key(key)
        progress(i / n, f"{spec.label}: features, then t-SNE")
        feats, labels = rt.features(experiments.task_model(rt, spec, task), task, index=idx)
        # panels are independent (same seed and perplexity each): one at a time, so Cancel acts between them
        p, q = embed.embed_panels({spec.label: feats}, labels, rt.spec(task).classes, perplexity=perplexity,
                                  seed=seed)
        points.append(p)
        quality.append(q)
    return pd.concat(points, ignore_index=True), pd.concat(quality, ignore_index=True)


with page.user_errors():
    rt = ctx.runtime
    c = st.columns([1, 1, 2])
    with c[0]:
        task = state.kept(st.selectbox, "Task", key=state.EM_TASK, options=ctx.zoo.task_names, index=0,
                          format_func=lambda n: ctx.zoo.task(n).label)
        source = widgets.source_picker(state.EM_SOURCE, rt)
    options = specs.panel_options(source, ctx.zoo)
    with c[2]:
        # one multiselect per kind of fine-tune: their options differ (see the Trade-offs page)
        chosen = state.kept(st.multiselect, "Panels", key=state.for_source(state.EM_METHODS, source),
                            options=list(options), format_func=options.get, wrap=True,
                            default=[o for o in specs.default_panels(source, ctx.zoo) if o in options])
        keep = rank = None
        if any(o.startswith(("post-pruning", "peru-fft")) for o in chosen):
            keep = widgets.keep_slider(state.EM_KEEP)
        if "peru-lora" in chosen:
            r = widgets.lora_rank(rt, source)
            rank = widgets.rank_slider(state.for_source(state.EM_RANK, source), r, value=16)  # clamped to r
    with c[1]:
        per_class = state.kept(st.slider, "Images per class", key=state.EM_PER_CLASS, min_value=5, max_value=100,
                               value=20, step=5)
        perplexity = state.kept(st.slider, "Perplexity", key=state.EM_PERPLEXITY, min_value=5.0, max_value=50.0,
                                value=30.0, step=1.0, format="%.0f", help="Same in every panel; clamped below n/3.")
        seed = int(state.kept(st.number_input, "Seed", key=state.EM_SEED, min_value=0, max_value=2**31 - 1,
                              value=0, step=1))
    if not chosen:
        st.info("Pick at least one panel.")
        st.stop()
    keys = tuple(specs.panel(o, source, keep, rank).key() for o in chosen)
    config = (ctx.zoo_hash, task, keys, per_class, float(perplexity), seed)
    job_key = "tsne:" + repr(config)
    computed = cache.embeddings().get(config)  # every configuration computed on this server lately
    job = jobs.jobs().get(job_key) if computed is None else None
    running = job is not None and job.active
    if st.button("Compute t-SNE", key=state.EM_COMPUTE, type="primary", disabled=computed is not None or running,
                 help="Features of every panel's model, then one t-SNE per panel; kept for this configuration."):
        if computed is None and not running:
            def work(progress, config=config):
                cache.embeddings().put(config, tsne_panels(rt, *config[1:], progress))

            jobs.jobs().submit(job_key, f"Embedding {len(keys)} panels", work)
    if computed is None:
        job = jobs.watch(job_key, "em")
        if job is None or not job.active:
            st.info(f"Press **Compute t-SNE** to embed {len(keys)} panels "
                    f"(the features of every method, then one t-SNE per panel).")
        st.stop()
    points, quality = computed
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
            m[1].metric("5-NN accuracy", fmt.pct_text(q["knn_accuracy"]))
    st.subheader("Cluster quality")
    st.plotly_chart(viz.cluster_quality_bars(quality), key="em_quality")
