"""One style (colour + marker) per method family, so a method keeps its look on every page and when others
are hidden. Families are the ``RunSpec.method_label`` strings (``"Task Arithmetic"``, ``"PERU-FFT (TIES-Merging)"``,
``"Single-Task [LoRA]"``); see https://arxiv.org/abs/2310.01886 for the methods.

The table matches families by keyword, so a merge method added to the registry gets its own colour without an edit
here (unknown ones draw from a spare palette, stably by name).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Style:
    color: str
    symbol: str  # a plotly marker symbol
    rank: int  # position in legends (category order)


# keyword in the lower-cased label -> (colour, marker, order). Checked in this order; the first match wins.
_MERGES: tuple[tuple[str, str, str], ...] = (
    ("arithmetic", "#1f77b4", "circle"),
    ("ties", "#9467bd", "diamond"),
    ("fisher", "#8c564b", "triangle-up"),
    ("regmean", "#17becf", "square"),
    ("average", "#7f7f7f", "pentagon"),
    ("mean", "#7f7f7f", "pentagon"),
)
# the rest of the field: checked BEFORE _MERGES (so "DARE + TIES" is not TIES), numbered after them (so the paper's
# merges keep their order and PERU-FFT shades)
_FIELD: tuple[tuple[str, str, str], ...] = (
    ("dare + task", "#6baed6", "circle-cross"),
    ("dare + ties", "#c5b0d5", "diamond-cross"),
    ("breadcrumbs", "#8c6d31", "star-triangle-up"),
    ("magmax", "#e7ba52", "hourglass"),
    ("consensus", "#393b79", "circle-x"),
    ("lines", "#5254a3", "bowtie"),
    ("model stock", "#637939", "star-square"),
    ("tsv-m", "#ad494a", "hexagram"),
    ("iso-cts", "#7b4173", "octagon"),
    ("iso-c", "#a55194", "cross"),
)
# PERU-FFT keeps the inner merge's marker and takes a warm shade, so "PERU-FFT (X)" reads as "X, plus task parts".
_PERU_FFT_SHADES = ("#d62728", "#ff7f0e", "#e377c2", "#bcbd22", "#a0522d", "#ff9896")
_FIXED: dict[str, Style] = {
    "pre-trained": Style("#555555", "x", 0),
    "single-task": Style("#000000", "star", 1),
    "post-pruning": Style("#2ca02c", "triangle-down", 40),
    "peru-lora": Style("#e6007e", "hexagon", 60),
    # a bitmask per task on a shared task vector (peru_core/partreuse.py): after Post-Pruning, before PERU-FFT
    "tall masks": Style("#00a087", "diamond-tall", 44),
    "emr-merging": Style("#6a3d9a", "star-diamond", 46),
}
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1")


def _spare(label: str) -> str:
    # Stable across runs and processes (Python's hash() is salted).
    return _SPARE[int(hashlib.md5(label.encode()).hexdigest(), 16) % len(_SPARE)]


def _merge_style(low: str) -> tuple[int, str, str] | None:
    for j, (kw, color, symbol) in enumerate(_FIELD):
        if kw in low:
            return len(_MERGES) + j, color, symbol
    for i, (kw, color, symbol) in enumerate(_MERGES):
        if kw in low:
            return i, color, symbol
    return None


def style(family: str) -> Style:
    """The colour, marker and legend position of a method family (``RunSpec.method_label``)."""
    low = family.lower()
    # the fine-tune kind keeps the method's colour and changes the marker: LoRA open, L-LoRA dotted
    llora = "[l-lora]" in low
    lora = "[lora]" in low or llora
    fill = "-dot" if llora else "-open"
    base = low.replace("[lora]", "").replace("[l-lora]", "").strip()
    if base in _FIXED:
        s = _FIXED[base]
        return Style(s.color, s.symbol + (fill if lora else ""), s.rank + (1 if lora else 0))
    if base.startswith("peru-lora"):
        s = _FIXED["peru-lora"]
        return Style(s.color, s.symbol + ("-open" if llora else ""), s.rank + (1 if llora else 0))
    if base.startswith("peru-fft"):
        found = _merge_style(base)
        i = found[0] if found else len(_MERGES)
        return Style(_PERU_FFT_SHADES[i % len(_PERU_FFT_SHADES)] if found else _spare(family),
                     found[2] if found else "circle", 50 + i)
    found = _merge_style(base)
    if found:
        i, color, symbol = found
        return Style(color, symbol + (fill if lora else ""), 10 + 2 * i + (1 if lora else 0))
    return Style(_spare(family), "circle" + (fill if lora else ""), 30)


def color_map(families: Iterable[str]) -> dict[str, str]:
    """``color_discrete_map`` for plotly express."""
    return {f: style(f).color for f in families}


def symbol_map(families: Iterable[str]) -> dict[str, str]:
    """``symbol_map`` for plotly express."""
    return {f: style(f).symbol for f in families}


def ordered(families: Iterable[str]) -> list[str]:
    """Families in legend order (references first, merges, Post-Pruning, PERU-FFT, PERU-LoRA); ties by name."""
    return sorted(set(families), key=lambda f: (style(f).rank, f))


# Class colours (t-SNE panels) and line colours (spectra): 20 colours picked greedily, each the farthest (CIEDE2000)
# from the white background and the ones before it, from a 16-level sRGB grid with CIELAB lightness 25-75 (visible
# on white), starting from red. Any two of the first 10 differ by >= 28 Delta-E 2000, of all 20 by >= 21 (plotly's
# Dark24 has 10 and 8.7: its classes 1/4 and 7/9 look alike). tests/core/test_viz_readability.py checks this.
CLASS_COLORS: tuple[str, ...] = (
    "#d62728", "#005500", "#006699", "#dd55ff", "#44bb00", "#dd9900", "#662266", "#00bbbb", "#664400", "#88aaff",
    "#998888", "#ff9977", "#667766", "#0000ff", "#004444", "#ff4488", "#554444", "#888800", "#7766aa", "#aabb99",
)
_CLASS_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x", "cross", "star")
_DASHES = ("solid", "dash", "dot", "dashdot")


def class_symbols(n: int) -> list[str]:
    """Marker of each of ``n`` classes: circles for the first 20, then a new marker per round of colours, so no two
    classes share both colour and marker."""
    return [_CLASS_SYMBOLS[(i // len(CLASS_COLORS)) % len(_CLASS_SYMBOLS)] for i in range(n)]


def distinct_colors(n: int) -> tuple[list[str], list[str]]:
    """Colour and line dash of each of ``n`` lines: the 20 class colours solid, then again dashed, dotted, ..."""
    return ([CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(n)],
            [_DASHES[(i // len(CLASS_COLORS)) % len(_DASHES)] for i in range(n)])
