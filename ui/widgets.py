"""Widgets shared by pages; merge sliders come from the registry's Param list, so a new method needs no page edit."""
from __future__ import annotations

import math
from typing import Any

import streamlit as st

from peru_core.merging import MergeMethod, Param, get_method, list_methods
from peru_core.zoo.manifest import Zoo
from ui import state

SOURCES = {"full": "Full fine-tunes", "lora": "LoRA fine-tunes", "llora": "L-LoRA fine-tunes"}
DEFAULT_MERGE = "task_arithmetic"
TEST_TIME_WARNING = ("**Trains at test time.** This merge learns its coefficients on the unlabelled test images of "
                     "every task (never their labels), the same images it is then scored on: its accuracy is not "
                     "comparable with a data-free merge's.")


def slider_step(p: Param) -> float:
    """The registry's step; else 1 for integers and a round step giving ~100 positions over [low, high]."""
    if p.step:
        return int(p.step) if p.integer else p.step
    if p.integer:
        return 1
    span = p.high - p.low
    return 10.0 ** math.floor(math.log10(span / 100.0)) if span > 0 else 1.0


def param_sliders(prefix: str, method: MergeMethod) -> dict[str, Any]:
    """One widget per registered parameter of ``method``: a slider for a number (range, default and help from its
    Param), a selectbox for a choice (its labels name the tools that use each convention)."""
    values: dict[str, Any] = {}
    for p in method.params:
        if p.is_choice:
            values[p.name] = state.kept(
                st.selectbox, p.title, key=state.param_key(prefix, method.name, p.name), options=list(p.choices),
                index=p.choices.index(p.default), format_func=p.choice_label,
                help=f"{p.help[:1].upper()}{p.help[1:]} (`{p.name}` on the command line: "
                     f"{', '.join(p.choices)}).")
            continue
        cast = int if p.integer else float
        values[p.name] = state.kept(
            st.slider, p.title, key=state.param_key(prefix, method.name, p.name), min_value=cast(p.low),
            max_value=cast(p.high), value=cast(p.default), step=cast(slider_step(p)), format=p.value_format,
            help=f"{p.help[:1].upper()}{p.help[1:]} (`{p.name}` on the command line).")
    return values


def usable_methods(zoo: Zoo) -> list[MergeMethod]:
    """Registered merges that this zoo can run (Fisher / RegMean need validation data on every task)."""
    has_val = all(t.validation is not None for t in zoo.tasks)
    return [m for m in list_methods() if has_val or not m.needs_validation]


def merge_picker(prefix: str, zoo: Zoo, label: str = "Merge method") -> tuple[str, dict[str, Any]]:
    """A method selectbox and its parameter sliders; returns (method name, parameter values)."""
    methods = usable_methods(zoo)
    names = [m.name for m in methods]
    name = state.kept(st.selectbox, label, key=f"{prefix}_merge", options=names,
                      index=names.index(DEFAULT_MERGE) if DEFAULT_MERGE in names else 0,
                      format_func=lambda n: get_method(n).label, help=_help(methods))
    method = get_method(name)
    st.caption(f"{method.summary} ([paper]({method.paper}))" if method.summary else f"[paper]({method.paper})")
    if method.test_time:
        st.warning(TEST_TIME_WARNING, icon=":material/warning:")
    return name, param_sliders(prefix, method)


def _help(methods: list[MergeMethod]) -> str:
    return "  \n".join(f"**{m.label}**: {m.summary}" for m in methods if m.summary)


def source_picker(key: str, rt) -> str:
    """Full, LoRA or L-LoRA fine-tunes (only the kinds every task of the zoo has)."""
    from peru_core.experiments import available_sources

    have = [s.value for s in available_sources(rt)]
    if not have:
        from peru_core.errors import PeruError

        raise PeruError("No fine-tune kind is present for every task of this zoo; give each task a full "
                        "fine-tune or a LoRA adapter.")
    return state.kept(st.radio, "Fine-tunes", key=key, options=have, format_func=SOURCES.get, index=0,
                      horizontal=True)


def keep_slider(key: str) -> float:
    """The m% slider (step 1: arrow keys move it one percent)."""
    return float(state.kept(st.slider, "Kept per task m (% of entries)", key=key, min_value=0.0, max_value=100.0,
                            value=10.0, step=1.0, format="%.0f%%",
                            help="Percent of the entries of each task's vector kept, largest magnitudes first."))


def rank_slider(key: str, rank: int, value: int = 4, label: str = "Rank kept q (of r per LoRA matrix)") -> int:
    """The q slider in [1, r]."""
    rank = max(int(rank), 1)
    if rank == 1:
        st.caption("q = 1 (the adapters have rank 1).")
        return 1
    return int(state.kept(st.slider, label, key=key, min_value=1, max_value=rank, value=min(value, rank), step=1,
                          help="Singular values (and vectors) kept of each LoRA product B A."))


def lora_rank(rt, source: str = "lora") -> int:
    """The largest rank r among the zoo's adapters of ``source`` ("lora" or "llora"; 0 when it has none)."""
    from peru_core.experiments import available_sources, lora_rank as rank
    from peru_core.spec import Source

    src = Source(source)
    return rank(rt, src) if src.is_adapter and src in available_sources(rt) else 0
