"""Downloads: the results as CSV (accuracy in %, 2 decimals), and the shared model plus every task's part as
safetensors: the very files whose sizes the page reports (formats: docs/task_part_format.md)."""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from peru_core.spec import RunSpec
from peru_core.table import results_csv
from peru_core.viz import fmt_bytes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def results_file(spec: RunSpec, df: pd.DataFrame, precision: str = "float32") -> tuple[bytes, str]:
    """The results CSV and its file name; rows evaluated in another precision than float32 carry a ``precision``
    column and the name says it too, so the file tells what its numbers are wherever it ends up."""
    name = _slug(spec.label)
    if precision != "float32":
        df, name = df.assign(precision=precision), f"{name}_{precision}"
    return results_csv(df).encode(), f"{name}.csv"


def downloads(rt, spec: RunSpec, df: pd.DataFrame, prefix: str) -> None:
    """A CSV of ``df`` at once; the safetensors of ``spec`` (built by ``experiments.artifacts``) on request,
    kept for this session until the setting changes."""
    st.subheader("Downloads")
    row = st.container(horizontal=True, vertical_alignment="center")  # buttons as wide as their text
    cols = [row, row, row]
    data, name = results_file(spec, df, rt.precision)
    cols[0].download_button("Results (CSV)", data, file_name=name, mime="text/csv", key=f"{prefix}_csv",
                            on_click="ignore")
    slot = f"_{prefix}_artifacts"
    held = st.session_state.get(slot)
    if held is None or held[0] != spec.key():
        if cols[1].button("Prepare safetensors", key=f"{prefix}_prepare",
                          help="The shared (merged) model and each task's part, ready to download."):
            from peru_core import experiments

            with st.spinner("Writing safetensors…"):
                files = experiments.artifacts(rt, spec)
            st.session_state[slot] = held = (spec.key(), files)
    if held is not None and held[0] == spec.key():
        files = held[1]
        cols[2].caption(f"{len(files)} files for {spec.label}, {fmt_bytes(sum(len(b) for b in files.values()))}")
        grid = st.columns(min(4, max(1, len(files))))
        for i, (name, data) in enumerate(files.items()):
            grid[i % len(grid)].download_button(name, data, file_name=name, mime="application/octet-stream",
                                                key=f"{prefix}_file_{i}", on_click="ignore")
