"""The Upload page's form fields: every field a zoo.json holds besides its files, per zoo and per task.

A zoo.json to start from (uploaded, or found in the chosen folder) fills the fields once, when it arrives; the user
may then edit any of them. Keys carry the form's generation (:func:`key`): saving a zoo starts a fresh, empty form.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import streamlit as st

from peru_core.errors import PeruError
from ui import state
from ui import upload as up

GEN, SAVED, START_MARKER, SELECT = "up_generation", "up_saved", "up_start_marker", "up_select"
UP_START, UP_LLORA, UP_VALIDATION, UP_CONFIG, UP_COPY = (
    "up_start", "up_llora", "up_validation", "up_config", "up_copy")
UP_ARCH_OTHER, UP_PREFIX, UP_TEMPLATES, UP_MEAN, UP_STD, UP_DESCRIPTION = (
    "up_arch_other", "up_prefix", "up_templates", "up_mean", "up_std", "up_description")
TASK_FIELDS = ("label", "classes", "templates", "synthetic", "source", "license")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# task fields of a zoo.json that the form shows (or that name files); any other field is kept as it is
KNOWN_TASK_KEYS = {"name", *TASK_FIELDS, *up.CHECKPOINTS, *up.SPLITS}


def key(name: str) -> str:
    """The widget key ``name`` in the current form generation (generation 0: the name itself)."""
    gen = st.session_state.get(GEN, 0)
    return name if gen == 0 else f"{name}_{gen}"


def task_key(task: str, what: str) -> str:
    """Key of a task's field (letters, digits, '_' and '-' only: browser tests find it as ``.st-key-<key>``)."""
    return key(f"up_task_{re.sub(r'[^A-Za-z0-9_-]+', '_', task)}_{what}")


def _put(k: str, value: Any) -> None:
    """Make ``value`` the field's value, before its widget is drawn in this run. Written through the Session State
    API, it reaches the browser's widget too (a changed default would not: the widget's identity is its key)."""
    st.session_state[k] = value
    st.session_state[state.SHADOW + k] = value


def _default(k: str, value: Any) -> None:
    """Give an empty field a value found later (an image folder's classes arrive after the task's checkpoint)."""
    if value and not st.session_state.get(state.SHADOW + k, st.session_state.get(k)):
        _put(k, value)


def select_in_sidebar(zoo_name: str) -> None:
    """Select the uploaded zoo ``zoo_name`` in the sidebar on the next run (:func:`apply_selection`, called before
    the sidebar is drawn: a drawn widget's value cannot be changed in the same run)."""
    st.session_state[SELECT] = zoo_name


def apply_selection() -> None:
    """Select the zoo :func:`select_in_sidebar` asked for (call before ``sidebar.context``)."""
    name = st.session_state.pop(SELECT, None)
    if name:
        _put(state.ZOO_KIND, "uploaded")
        _put(state.ZOO_UPLOADED, name)


def apply_start(raw: dict[str, Any], marker: str) -> None:
    """Fill the form from a zoo.json, once per new zoo.json (``marker`` identifies it)."""
    if st.session_state.get(key(START_MARKER)) == marker:
        return
    st.session_state[key(START_MARKER)] = marker
    arch = str(raw.get("architecture", ""))
    if arch:
        _put(key(state.UP_ARCH), arch if arch in up.ARCHITECTURES else "other")
        _put(key(UP_ARCH_OTHER), "" if arch in up.ARCHITECTURES else arch)
    _put(key(UP_PREFIX), str(raw.get("tuned_prefix", "visual.")))
    _put(key(UP_TEMPLATES), "\n".join(raw.get("templates", DEFAULT_TEMPLATES)))
    _put(key(UP_MEAN), ", ".join(str(float(v)) for v in raw.get("image_mean", ())))
    _put(key(UP_STD), ", ".join(str(float(v)) for v in raw.get("image_std", ())))
    _put(key(UP_DESCRIPTION), str(raw.get("description", "")))
    for t in raw.get("tasks", []):
        n = t["name"]
        _put(task_key(n, "label"), str(t.get("label", n)))
        _put(task_key(n, "classes"), "\n".join(map(str, t.get("classes", []))))
        _put(task_key(n, "templates"), "\n".join(map(str, t.get("templates", []))))
        _put(task_key(n, "synthetic"), bool(t.get("synthetic", False)))
        _put(task_key(n, "source"), str(t.get("source", "")))
        _put(task_key(n, "license"), str(t.get("license", "")))


@dataclass
class ZooFields:
    """The zoo-wide fields of the form."""

    architecture: str
    tuned_prefix: str
    templates: tuple[str, ...]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    description: str


def zoo_fields() -> ZooFields:
    """Draw the zoo-wide fields (architecture, tuned part, prompts, image statistics, description)."""
    c = st.columns([1, 1, 1])
    arch = state.kept(c[0].selectbox, "Architecture (open_clip name)", key=key(state.UP_ARCH),
                      options=[*up.ARCHITECTURES, "other"], index=0)
    if arch == "other":
        arch = state.kept(c[0].text_input, "Other open_clip name", key=key(UP_ARCH_OTHER), value="",
                          help="A custom name needs its model_config.json (or a zoo.json holding model_config).")
    prefix = state.kept(c[1].text_input, "Tuned part (key prefix)", key=key(UP_PREFIX), value="visual.",
                        help="The tensors the fine-tunes change: the image tower, 'visual.', in CLIP zoos.")
    mean = state.kept(c[2].text_input, "Image mean (per channel; empty: CLIP's)", key=key(UP_MEAN), value="",
                      placeholder="0.481, 0.458, 0.408",
                      help="The normalisation the checkpoints were trained with; a different one changes accuracy.")
    std = state.kept(c[2].text_input, "Image std (per channel; empty: CLIP's)", key=key(UP_STD), value="",
                     placeholder="0.269, 0.261, 0.276")
    templates = state.kept(c[1].text_area, "Prompt templates, one per line ({} = the class name)",
                           key=key(UP_TEMPLATES), value="\n".join(DEFAULT_TEMPLATES), height=100,
                           help="The zero-shot heads average these prompts per class; a task may set its own.")
    description = state.kept(c[0].text_area, "Description (optional)", key=key(UP_DESCRIPTION), value="",
                             height=100)
    image_mean, image_std = up.parse_floats(mean, "Image mean"), up.parse_floats(std, "Image std")
    if len(image_mean) != len(image_std) or len(image_mean) not in (0, 1, 3):
        raise PeruError("Give the image mean and std with one value per colour channel (3) each, or leave both "
                        "empty for CLIP's.")
    if any(s <= 0 for s in image_std):
        raise PeruError("Every image std value must be positive.")
    return ZooFields(arch.strip(), prefix.strip(), _templates(up.lines(templates), "The zoo's prompt templates"),
                     image_mean, image_std, description.strip())


def _templates(found: tuple[str, ...], what: str) -> tuple[str, ...]:
    bad = [t for t in found if "{}" not in t]
    if bad:
        raise PeruError(f"{what}: {bad[0]!r} has no '{{}}'; put '{{}}' where the class name goes.")
    return found


@dataclass
class TaskFields:
    """One task's fields besides its files."""

    label: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    synthetic: bool
    source: str
    license: str
    extra: dict[str, Any] = field(default_factory=dict)


def task_fields(t: up.TaskFiles, start_task: Optional[dict[str, Any]]) -> TaskFields:
    """Draw one task's fields in an expander (open when its classes are missing)."""
    _default(task_key(t.name, "classes"), "\n".join(t.classes))
    have = ", ".join(up.KIND_NAMES[k] for k in (*up.CHECKPOINTS, *up.SPLITS) if getattr(t, k) is not None)
    classes_now = st.session_state.get(state.SHADOW + task_key(t.name, "classes"), "")
    with st.expander(f"**{t.name}** · {have}", expanded=len(up.lines(classes_now)) < 2):
        c = st.columns([1, 1, 1])
        label = state.kept(c[0].text_input, "Label", key=task_key(t.name, "label"), value=t.name)
        synthetic = state.kept(c[0].checkbox, "Synthetic data", key=task_key(t.name, "synthetic"), value=False,
                               help="Images generated by a program rather than collected: Home says so.")
        classes = state.kept(c[1].text_area, "Classes, one per line (in label order)", key=task_key(t.name, "classes"),
                             value="", height=120)
        templates = state.kept(c[2].text_area, "Own prompt templates, one per line (empty: the zoo's)",
                               key=task_key(t.name, "templates"), value="", height=120)
        source = state.kept(c[0].text_input, "Data source", key=task_key(t.name, "source"), value="")
        lic = state.kept(c[1].text_input, "Licence", key=task_key(t.name, "license"), value="")
    extra = {k: v for k, v in (start_task or {}).items() if k not in KNOWN_TASK_KEYS}
    return TaskFields(label.strip() or t.name, up.lines(classes),
                      _templates(up.lines(templates), f"Task {t.name}'s prompt templates"), bool(synthetic),
                      source.strip(), lic.strip(), extra)
