"""PERU Studio, Home: pick a zoo and a device; see its tasks, sizes and the two ends of every comparison.

Run with ``streamlit run app.py``. Each page in pages/ also works when opened directly.
PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from peru_core import fmt, viz
from peru_core.experiments import available_sources
from peru_core.statedict import numel
from peru_core.spec import RunSpec, Source
from ui import cache, page, sidebar, state
from ui.widgets import lora_rank

NOT_STATED = "not stated"  # not "-": a table cell of "-" renders as a bullet (markdown)
KINDS = {Source.FULL: ("finetuned", "full"), Source.LORA: ("lora", "LoRA"), Source.LLORA: ("llora", "L-LoRA")}


def _data_source(t) -> str:
    """Where a task's images come from, saying "synthetic" once for generated data."""
    if not t.synthetic:
        return t.source or NOT_STATED
    return t.source if "synthetic" in t.source.lower() else "synthetic" + (f": {t.source}" if t.source else "")


def task_table(zoo) -> pd.DataFrame:
    """One row per task: label, classes, the kinds of fine-tune it has, where its data comes from, licence."""
    return pd.DataFrame([{
        "task": t.name, "label": t.label, "classes": len(t.classes),
        "fine-tunes": ", ".join(name for attr, name in KINDS.values() if getattr(t, attr, None) is not None),
        "data": _data_source(t),
        "licence": t.license or NOT_STATED,
    } for t in zoo.tasks]).set_index("task")


def references_caption(df: pd.DataFrame, sources: list[str]) -> str:
    """The caption under the reference table, its numbers computed from the rows shown (true for any zoo)."""
    pre = df[df["spec_key"] == RunSpec.make("pretrained").key()].set_index("task")["accuracy"]
    gains = []
    for s in sources:
        spec = RunSpec.make("single-task", s)
        st_acc = df[df["spec_key"] == spec.key()].set_index("task")["accuracy"]
        gap = (st_acc - pre.reindex(st_acc.index)).dropna()
        if len(gap):
            gains.append(f"{spec.label} minus Pre-trained: {fmt.points_text(gap.mean())} on average "
                         f"({fmt.points_text(gap.min())} to {fmt.points_text(gap.max())} per task)")
    return ("Accuracy is top-1 on each task's held-out test set with a frozen zero-shot head built from the class "
            "names and prompt templates (the task-vectors protocol). Pre-trained is the one shared model before "
            "fine-tuning; Single-Task serves every task its own fine-tune. " + "; ".join(gains) + ". The next pages "
            "place every method against these two references; a merge can fall below Pre-trained when the tasks "
            "interfere.")


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
    r = max([lora_rank(rt, s.value) for s in available_sources(rt) if s.is_adapter], default=0)
    # the architecture is a name, not a number: in a metric tile it was cut off ("peru-tiny...") on narrow windows
    st.markdown(f"**{zoo.name}** · architecture `{zoo.architecture}`"
                + (" (custom open_clip config)" if zoo.model_config else "") + f" · tuned part `{zoo.tuned_prefix}*`")
    c = st.columns(4)
    c[0].metric("Tasks", len(zoo.tasks))
    c[1].metric("Model #params", viz.fmt_count(total))
    c[2].metric("Tuned #params", viz.fmt_count(tuned), help=f"The tensors under `{zoo.tuned_prefix}`: what the "
                "fine-tunes change and what a merge or task vector covers.")
    c[3].metric("Adapter rank", r if r else "none", help="The largest rank r of the zoo's LoRA / L-LoRA adapters.")
    if zoo.description:
        st.caption(zoo.description)
    st.subheader("Tasks")
    st.table(task_table(zoo))

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
        st.table(viz.table_style(viz.accuracy_table(df, zoo.task_names)))
        st.plotly_chart(viz.task_bars(df), key="home_bars")
        st.caption(references_caption(df, sources))
