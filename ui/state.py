"""Widget keys and session state. Every widget has an explicit key (browser tests find it as ``.st-key-<key>``).

Streamlit drops a widget's value when its page is left; :func:`kept` stores a shadow copy so a setting survives a
trip to another page, and repairs a stale value (an option that no longer exists, a number out of range) instead
of letting the widget raise. The settings of the analysis pages and the sidebar are also bound to the URL
(``?lab_keep=20&lab_mode_full=peru-fft``), so they survive a reload and a copied link opens the same view.

A widget whose options depend on the kind of fine-tune (full, LoRA, L-LoRA) has one key per kind
(:func:`for_source`): a value chosen for one kind is never shown, or silently trimmed, under another.
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


# keys bound to the URL: what a shared link should reproduce (not the Upload form, not one-off buttons)
URL_PREFIXES = ("lab_", "to_", "em_", "sp_", ZOO_KIND, ZOO_FOLDER, ZOO_UPLOADED, DEVICE)


def for_source(key: str, source: str) -> str:
    """The key of a widget whose options or default depend on the kind of fine-tune (one widget per kind)."""
    return f"{key}_{source}"


def param_key(prefix: str, method: str, param: str) -> str:
    """Key of a merge-parameter slider: one per (page, method, parameter)."""
    return f"{prefix}_param_{method}_{param}"


_MISSING = object()


def _valid(v: Any, kwargs: dict[str, Any]) -> Any:
    """``v`` made valid for the widget about to be drawn (options filtered, a number clamped), or _MISSING."""
    if "options" in kwargs:
        opts = list(kwargs["options"])
        if isinstance(v, (list, tuple)):
            return [o for o in v if o in opts]
        return v if v in opts else _MISSING
    if "min_value" in kwargs and isinstance(v, (int, float)) and not isinstance(v, bool):
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        return type(v)(min(max(v, lo if lo is not None else v), hi if hi is not None else v))
    return v


def _as_default(v: Any, kwargs: dict[str, Any]) -> None:
    """Make ``v`` the widget's default argument (``default``, ``index`` or ``value``)."""
    if "options" in kwargs:
        if isinstance(v, list):
            kwargs["default"] = v
        else:
            kwargs["index"] = list(kwargs["options"]).index(v)
    else:
        kwargs["value"] = v


def kept(widget: Callable[..., Any], label: str, *, key: str, **kwargs: Any) -> Any:
    """Draw ``widget(label, key=key, **kwargs)`` with its value kept across pages and repaired when stale.

    The last value the user chose is passed to the widget as its default (``value`` / ``index`` / ``default``),
    never written into ``st.session_state[key]`` before the widget exists: the browser draws a re-created widget
    from its default, so a value set behind its back showed one thing (no option selected) while the page computed
    another. A live value that is no longer valid (an option gone, a number out of range) is dropped for the
    repaired one. Keys starting with one of :data:`URL_PREFIXES` are bound to the URL's query parameters (Streamlit
    drops a URL value that is not valid for the widget)."""
    shadow = SHADOW + key
    if shadow in st.session_state:  # the last value the user chose, on whichever page
        fixed = _valid(st.session_state[shadow], kwargs)
        if fixed is _MISSING:
            del st.session_state[shadow]
        else:
            st.session_state[shadow] = fixed
            _as_default(fixed, kwargs)
    if key in st.session_state:  # a value Streamlit still holds: stale, or not the one the user chose last
        v = st.session_state[key]
        fixed = _valid(v, kwargs)
        if fixed is _MISSING or fixed != v or st.session_state.get(shadow, v) != v:
            del st.session_state[key]  # the widget is then built from its default (the repaired choice)
            if fixed is not _MISSING and shadow not in st.session_state:
                st.session_state[shadow] = fixed
                _as_default(fixed, kwargs)

    def _save() -> None:
        st.session_state[shadow] = st.session_state[key]

    if key.startswith(URL_PREFIXES):
        kwargs.setdefault("bind", "query-params")
    return widget(label, key=key, on_change=_save, **kwargs)
