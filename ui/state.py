"""Widget keys and session state. Every widget has an explicit key (browser tests find it as ``.st-key-<key>``).

Streamlit drops a widget's value when its page is left; :func:`kept` stores a shadow copy so a setting survives a
trip to another page, and repairs a stale value (an option that no longer exists, a number out of range) instead
of letting the widget raise.
"""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

SHADOW = "_kept_"

# sidebar
ZOO_KIND, ZOO_FOLDER, ZOO_UPLOADED, DEVICE = "zoo_kind", "zoo_folder", "zoo_uploaded", "device"
# Merge lab
LAB_SOURCE, LAB_MERGE, LAB_MODE, LAB_KEEP, LAB_SCOPE, LAB_RANK = (
    "lab_source", "lab_merge", "lab_mode", "lab_keep", "lab_scope", "lab_rank")
LAB_COMPUTE, LAB_AUTO, LAB_PREPARE = "lab_compute", "lab_auto", "lab_prepare"
# Trade-offs
TO_SOURCE, TO_METHODS, TO_KEEPS, TO_RANKS, TO_SCOPE, TO_COMPUTE, TO_BUDGET, TO_X, TO_CSV = (
    "to_source", "to_methods", "to_keeps", "to_ranks", "to_scope", "to_compute", "to_budget", "to_x", "to_csv")
# Spectra
SP_TASK, SP_LAYER, SP_RANK, SP_FULL_LAYER, SP_FULL_RANK, SP_VECTOR, SP_KEEP = (
    "sp_task", "sp_layer", "sp_rank", "sp_full_layer", "sp_full_rank", "sp_vector", "sp_keep")
# Embeddings
EM_TASK, EM_SOURCE, EM_METHODS, EM_KEEP, EM_RANK, EM_PER_CLASS, EM_PERPLEXITY, EM_SEED, EM_COMPUTE = (
    "em_task", "em_source", "em_methods", "em_keep", "em_rank", "em_per_class", "em_perplexity", "em_seed",
    "em_compute")
# Upload
UP_NAME, UP_ARCH, UP_BASE, UP_FINETUNED, UP_ADAPTERS, UP_DATA, UP_CLASSES, UP_FOLDER, UP_SAVE = (
    "up_name", "up_arch", "up_base", "up_finetuned", "up_adapters", "up_data", "up_classes", "up_folder", "up_save")
HOME_EVALUATE = "home_evaluate"


def param_key(prefix: str, method: str, param: str) -> str:
    """Key of a merge-parameter slider: one per (page, method, parameter)."""
    return f"{prefix}_param_{method}_{param}"


def _repair(key: str, kwargs: dict[str, Any]) -> None:
    """Make a stored value valid for the widget about to be drawn (or forget it)."""
    if key not in st.session_state:
        return
    v = st.session_state[key]
    if "options" in kwargs:
        opts = list(kwargs["options"])
        if isinstance(v, list):
            st.session_state[key] = [o for o in v if o in opts]
        elif v not in opts:
            del st.session_state[key]
    elif "min_value" in kwargs and isinstance(v, (int, float)) and not isinstance(v, bool):
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        st.session_state[key] = type(v)(min(max(v, lo if lo is not None else v), hi if hi is not None else v))


def kept(widget: Callable[..., Any], label: str, *, key: str, **kwargs: Any) -> Any:
    """Draw ``widget(label, key=key, **kwargs)`` with its value kept across pages and repaired when stale.

    ``value`` / ``index`` / ``default`` apply only the first time (Streamlit warns when both a default and a
    session-state value are given)."""
    shadow = SHADOW + key
    if shadow in st.session_state:  # the last value the user chose, on whichever page
        st.session_state[key] = st.session_state[shadow]
    _repair(key, kwargs)
    if key in st.session_state:
        for name in ("value", "index", "default"):
            kwargs.pop(name, None)
    def _save() -> None:
        st.session_state[shadow] = st.session_state[key]

    return widget(label, key=key, on_change=_save, **kwargs)
