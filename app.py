"""PERU Studio, Home: pick a zoo and a device; see its tasks, sizes and the two ends of every comparison.

Run with ``streamlit run app.py``. Each page in pages/ also works when opened directly.
PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from peru_core import viz
from peru_core.experiments import available_sources
from peru_core.statedict import numel
from peru_core.spec import RunSpec
from ui import cache, page, sidebar, state
from ui.widgets import lora_rank

page.setup("Home", ":material/home:")
ctx = sidebar.context()
page.intro(
    "PERU Studio",
    "You have one pre-trained model $\\theta_0$ and $T$ fine-tuned copies $\\theta_t$, one per task. "
    "**Merging** squeezes them into one shared model $\\theta^*$ and loses accuracy; **PERU** keeps a small "
    "task-specific part on top of a shared model and wins most of it back, for a few percent of extra parameters. "
    "Pick a zoo and a device in the sidebar, then follow the pages in order: Merge lab, Trade-offs, Spectra, "
    "Embeddings (or bring your own checkpoints on Upload).",
    r"v_t = \theta_t - \theta_0,\qquad \underbrace{\theta^* + \operatorname{top}_{m\%}(\theta_t - \theta^*)}"
    r"_{\text{PERU-FFT}},\qquad \underbrace{\theta_0 + U_q \Sigma_q V_q^\top}_{\text{PERU-LoRA}}",
    "Table 1 and Figure 1 (the Pre-Trained and Single-Task rows)",
)

with page.user_errors():
    rt = ctx.runtime
    zoo = ctx.zoo
    total = rt.model_params  # from the checkpoint's header: the model itself is built only to evaluate
    tuned = numel(rt.base_state())
    r = lora_rank(rt)
    c = st.columns(5)
    c[0].metric("Tasks", len(zoo.tasks))
    c[1].metric("Architecture", zoo.architecture)
    c[2].metric("Model #params", viz.fmt_count(total))
    c[3].metric(f"Fine-tuned part ({zoo.tuned_prefix}*)", viz.fmt_count(tuned))
    c[4].metric("LoRA rank r", r if r else "none")
    if zoo.description:
        st.caption(zoo.description)
    st.subheader("Tasks")
    st.table(pd.DataFrame([{
        "task": t.name, "label": t.label, "classes": len(t.classes),
        "fine-tunes": ", ".join(k for k, v in (("full", t.finetuned), ("LoRA", t.lora)) if v is not None),
        "data": "synthetic" if t.synthetic else (t.source or "real"), "licence": t.license or "-",
    } for t in zoo.tasks]).set_index("task"))

    st.subheader("Pre-trained and fine-tuned accuracy per task")
    sources = [s.value for s in available_sources(rt)]
    wanted = [RunSpec.make("pretrained")] + [RunSpec.make("single-task", s) for s in sources]
    todo = cache.missing(rt, wanted, ctx.zoo_hash)
    small = tuned < 5_000_000 or ctx.device == "cuda"  # seconds, not minutes: evaluate without asking
    if todo and (small or st.button("Evaluate the pre-trained and fine-tuned models", key=state.HOME_EVALUATE)):
        cache.compute(rt, todo, "Evaluating the references")
        st.rerun()
    if todo:
        st.info("These accuracies are not computed yet for this zoo; press the button (it evaluates every task).")
    else:
        df = cache.results(rt, wanted, ctx.zoo_hash)
        st.table(viz.accuracy_table(df, zoo.task_names).style.format(precision=1))
        st.plotly_chart(viz.task_bars(df), key="home_bars")
        st.caption("Accuracy is top-1 on each task's held-out test set with a frozen zero-shot head built from "
                   "the class names (the task-vectors protocol). Single-Task is the upper end, Pre-trained the "
                   "lower end: every method on the next pages falls between them.")
