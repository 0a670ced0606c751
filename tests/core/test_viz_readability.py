"""What a reader sees in the figures and tables (issue 14, items 9 and 17): one accuracy format, round labelled
ticks in one unit on every log axis, titles that fit their panels, every line named, classes in colours that differ,
named axes in one unit. Checked on the figure objects, the way plotly will draw them."""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest

from peru_core import fmt, layer_names, viz, viz_axes, viz_style

TASKS = ["mnist", "fashion", "digits", "textiles", "shapes"]


def _rows(key, label, method, mode, accs, params, task_bytes, keep=None):
    return [dict(spec_key=key, label=label, method=method, mode=mode, source="full", merge=None, keep=keep, rank=None,
                 scope="global", task=t, accuracy=a, params=params, bytes=4 * params + 5 * task_bytes,
                 task_params=task_bytes // 4, task_bytes=task_bytes) for t, a in zip(TASKS, accs)]


@pytest.fixture
def frame() -> pd.DataFrame:
    """Costs of the size the demo zoo has (MB), accuracies with many digits."""
    rows = (_rows("pre", "Pre-trained", "Pre-trained", "pretrained", [0.574613, 0.7013333, 0.58, 0.5, 0.4],
                  830_000, 0)
            + _rows("st", "Single-Task", "Single-Task", "single-task", [0.99, 0.95, 0.98, 0.9467, 0.91], 4_150_000,
                    3_320_000)
            + _rows("ta", "Task Arithmetic", "Task Arithmetic", "merge", [0.8, 0.6, 0.7, 0.61, 0.55], 830_000, 0)
            + [r for k in (5.0, 10.0, 20.0) for r in _rows(
                f"f{k:g}", f"PERU-FFT (Task Arithmetic) {k:g}%", "PERU-FFT (Task Arithmetic)", "peru-fft",
                [0.9, 0.8, 0.85, 0.8, 0.7], int(830_000 * (1 + k / 20)), int(3_320_000 * k / 100 * 1.6), keep=k)])
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- item 9: one accuracy format
def test_accuracy_table_is_percent_with_two_decimals(frame):
    t = viz.accuracy_table(frame)
    assert t.loc["Pre-trained", "mnist"] == 57.46 and t.loc["Pre-trained", "fashion"] == 70.13
    assert t.loc["Pre-trained", "Avg"] == fmt.pct(np.mean([0.574613, 0.7013333, 0.58, 0.5, 0.4]))
    text = viz.table_style(t).to_string()
    assert "58.00" in text and "70.13" in text and "57.46" in text
    assert not re.search(r"\d\.\d{3,}", text)  # no 57.461 / 70.1333


def test_captions_and_labels_use_two_decimals(frame):
    fig = viz.tradeoff(frame, "params")
    refs = sorted(a.text for a in fig.layout.annotations)
    assert refs == ["Pre-trained 55.12%", f"Single-Task {fmt.pct_text(np.mean([0.99, 0.95, 0.98, 0.9467, 0.91]))}"]
    assert re.search(r"\*\* keeps the most accuracy: \d+\.\d\d% on average \(Single-Task: \d+\.\d\d%\)",
                     viz.budget_sentence(frame, 10.0))
    assert fmt.pct_text(0.58) == "58.00%" and fmt.points_text(-0.0123) == "-1.23 points"


# ---------------------------------------------------------------- item 17: log axes
def _ticks_in_range(axis) -> list[tuple[float, str]]:
    lo, hi = (10 ** v for v in axis.range) if axis.type == "log" else axis.range
    return [(v, t) for v, t in zip(axis.tickvals, axis.ticktext) if lo <= v <= hi]


def _value_of(text: str) -> float:
    """A tick label read back as a number: ``'2.5 MB'`` -> 2.5e6, ``'1.5k'`` -> 1500, ``'1e-4'`` -> 1e-4."""
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s?(B|kB|MB|GB|TB|k|M|G|T)?", text)
    assert m, f"tick label {text!r} is not a number with a unit"
    scale = {None: 1, "B": 1, "k": 1e3, "kB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12}
    return float(m.group(1)) * scale[m.group(2)]


def _check_log_axis(axis, unit: str | None = None) -> None:
    ticks = _ticks_in_range(axis)
    assert len(ticks) >= 3, f"only {len(ticks)} labelled ticks on a log axis"
    for v, t in ticks:  # every label is the whole value it marks, in one unit
        assert _value_of(t) == pytest.approx(v, rel=1e-9), (t, v)
        if unit:
            assert t.endswith(unit), t


@pytest.mark.parametrize("x", ["params", "bytes"])
def test_cost_axes_have_several_round_labels_in_one_unit(frame, x):
    unit = " MB" if x == "bytes" else None
    _check_log_axis(viz.tradeoff(frame, x).layout.xaxis, unit)
    # a sweep within one decade (what the demo zoo's PERU-FFT settings span) and a single point
    narrow = frame[frame["mode"] == "peru-fft"]
    _check_log_axis(viz.tradeoff(narrow, x).layout.xaxis, unit)
    _check_log_axis(viz.tradeoff(narrow[narrow["keep"] == 10.0], x).layout.xaxis, unit)
    fig = viz.per_task_tradeoff(frame, x)
    for ax in (fig.layout[k] for k in fig.layout if k.startswith("xaxis")):
        _check_log_axis(ax, unit)


def test_bytes_ticks_spell_the_unit():
    assert viz.fmt_bytes(5e6) == "5 MB" and viz.fmt_bytes(2e7) == "20 MB" and viz.fmt_bytes(500e3) == "500 kB"
    assert viz_axes.log_ticks(4.5e6, 2.3e7) == [5e6, 1e7, 2e7]


def test_spectrum_axis_labels_are_values_not_si_letters():
    rng = np.random.default_rng(0)
    sv = np.sort(10 ** rng.uniform(-8.5, 0.5, 60))[::-1]
    df = pd.DataFrame({"layer": "a", "index": np.arange(1, 61), "sigma": sv})
    y = viz.spectrum(df).layout.yaxis
    _check_log_axis(y)
    assert all(re.fullmatch(r"\d(\.\d+)?e-?\d+", t) for t in y.ticktext)  # 1e-8 ... 1e0: one format
    assert not any(ch in "".join(y.ticktext) for ch in "uµnm")
    lora = df.assign(sigma=np.geomspace(5, 0.005, 60))  # 3 decades: plotly labelled it "5 2 1 5 2 0.1"
    _check_log_axis(viz.spectrum(lora).layout.yaxis)
    x = viz.magnitude_histogram(np.geomspace(1e-6, 0.3, 1000), threshold=0.01).layout.xaxis  # log10 units
    for v, t in zip(x.tickvals, x.ticktext):
        assert _value_of(t) == pytest.approx(10 ** v, rel=1e-9)
    assert len([v for v in x.tickvals if x.range[0] <= v <= x.range[1]]) >= 3


@pytest.mark.parametrize("lo,hi", [(1e3, 4e3), (1e3, 1e9), (3.5e6, 9e6), (0.9, 1.1), (2e5, 2.0001e5), (1e-9, 3)])
def test_log_ticks_always_give_several_labels(lo, hi):
    a, b = viz_axes.log_range([lo, hi])
    ticks = viz_axes.log_ticks(a, b)
    assert len(ticks) >= 3 and all(a <= t <= b for t in ticks) and ticks == sorted(ticks)
    assert len(ticks) <= 12


# ---------------------------------------------------------------- item 17: titles that fit
def _text_px(text: str, size: float = 14.0) -> float:
    return 0.56 * size * len(text)  # a generous average glyph width for plotly's default sans-serif


@pytest.mark.parametrize("x", ["params", "bytes"])
def test_per_task_axis_titles_fit_their_panels(frame, x):
    """At a 1024-px window a chart gets ~650 px; each x title must fit the width of the panel it sits under."""
    fig = viz.per_task_tradeoff(frame, x)
    width = 650 - (fig.layout.margin.l or 80) - (fig.layout.margin.r or 80)
    titles = [(ax.title.text, ax.domain) for ax in (fig.layout[k] for k in fig.layout if k.startswith("xaxis"))
              if ax.title.text]
    titles += [(a.text, (0.0, 1.0)) for a in fig.layout.annotations if a.name == "x title"]
    assert len(titles) == 1, titles  # one title for the grid
    for text, (d0, d1) in titles:
        assert _text_px(text) <= (d1 - d0) * width, text
    for k in fig.layout:  # plotly.js draws empty panels when matched x axes get a range and y autorange is unset
        if k.startswith("yaxis"):
            assert fig.layout[k].autorange is True
    ytitles = [ax.title.text for ax in (fig.layout[k] for k in fig.layout if k.startswith("yaxis")) if ax.title.text]
    ytitles += [a.text for a in fig.layout.annotations if a.name == "y title"]
    assert ytitles == [viz.ACCURACY]


# ---------------------------------------------------------------- item 17: every line named
def test_full_spectrum_names_every_line_in_the_legend():
    keys = [f"visual.transformer.resblocks.{b}.{m}" for b in range(4)
            for m in ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")]
    keys += ["visual.positional_embedding", "visual.proj"]
    df = pd.DataFrame([{"layer": layer_names.readable(k, "visual."), "index": i, "sigma": 1.0 / i}
                       for k in keys for i in range(1, 9)])
    fig = viz.spectrum(df)
    assert fig.layout.showlegend is True
    names = [t.name for t in fig.data]
    assert len(names) == len(set(names)) == len(keys)
    looks = {(t.line.color, t.line.dash) for t in fig.data}
    assert len(looks) == len(keys)  # no two lines look alike
    fig = viz.spectrum(df, highlight="block 2 · attention in-proj (qkv)")
    assert [t.line.width for t in fig.data if t.name.startswith("block 2 · attention in")] == [4]
    big = pd.DataFrame([{"layer": f"m{j}", "index": i, "sigma": 1.0 / i} for j in range(50) for i in (1, 2)])
    assert len({(t.line.color, t.line.dash) for t in viz.spectrum(big).data}) == 50


@pytest.mark.parametrize("key,name", [
    ("visual.transformer.resblocks.2.attn.in_proj_weight", "block 2 · attention in-proj (qkv)"),
    ("visual.transformer.resblocks.0.attn.out_proj.weight", "block 0 · attention out-proj"),
    ("visual.transformer.resblocks.11.mlp.c_fc.weight", "block 11 · MLP up-proj"),
    ("visual.transformer.resblocks.3.mlp.c_proj.weight", "block 3 · MLP down-proj"),
    ("visual.positional_embedding", "position embedding"),
    ("visual.proj", "output projection"),
    ("vision_model.encoder.layers.5.self_attn.q_proj.weight", "block 5 · attention query"),
    ("vision_model.encoder.layers.5.mlp.fc2.weight", "block 5 · MLP down-proj"),
    ("visual.some.new_thing.weight", "some · new_thing"),
])
def test_layer_names_are_readable(key, name):
    assert viz.layer_name(key, "visual.") == name


# ---------------------------------------------------------------- item 17: classes in colours that differ
def _lab(hex_color: str) -> tuple[float, float, float]:
    """sRGB hex -> CIELAB (D65)."""
    c = [int(hex_color.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c)
    xyz = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b, \
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    f = [v ** (1 / 3) if v > (6 / 29) ** 3 else v / (3 * (6 / 29) ** 2) + 4 / 29 for v in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def delta_e2000(c1: str, c2: str) -> float:
    """CIEDE2000 difference of two sRGB hex colours."""
    return _de2000(_lab(c1), _lab(c2))


def _de2000(lab1, lab2) -> float:
    """CIEDE2000 colour difference of two CIELAB colours (Sharma, Wu, Dalal 2005)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    cb = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(cb ** 7 / (cb ** 7 + 25 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p, h2p = math.degrees(math.atan2(b1, a1p)) % 360, math.degrees(math.atan2(b2, a2p)) % 360
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    dlp, dcp, dhp = l2 - l1, c2p - c1p, 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    lbp, cbp = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hbp = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hbp = (h1p + h2p) / 2
    else:
        hbp = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(hbp - 30)) + 0.24 * math.cos(math.radians(2 * hbp))
         + 0.32 * math.cos(math.radians(3 * hbp + 6)) - 0.20 * math.cos(math.radians(4 * hbp - 63)))
    rc = 2 * math.sqrt(cbp ** 7 / (cbp ** 7 + 25 ** 7))
    sl = 1 + 0.015 * (lbp - 50) ** 2 / math.sqrt(20 + (lbp - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    rt = -math.sin(math.radians(60 * math.exp(-(((hbp - 275) / 25) ** 2)))) * rc
    return math.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhp / sh) ** 2 + rt * (dcp / sc) * (dhp / sh))


@pytest.mark.parametrize("lab1,lab2,de", [  # Sharma, Wu, Dalal (2005), Table 1: pairs 1, 7, 13, 25
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
])
def test_delta_e2000_matches_the_published_pairs(lab1, lab2, de):
    assert _de2000(lab1, lab2) == pytest.approx(de, abs=1e-4)
    assert delta_e2000("#000000", "#ffffff") == pytest.approx(100.0, abs=0.01)


def test_tsne_classes_have_distinct_colours():
    classes = [str(i) for i in range(20)]
    pts = pd.DataFrame({"x": range(20), "y": range(20), "class": classes})
    fig = viz.tsne_scatter(pts, "panel", classes)
    colors = {t.name: t.marker.color for t in fig.data}
    for n, floor in ((10, 25.0), (20, 18.0)):
        worst = min(delta_e2000(colors[a], colors[b]) for a, b in itertools.combinations(classes[:n], 2))
        assert worst >= floor, f"two of the first {n} classes differ by only {worst:.1f} Delta-E 2000"
    assert all(delta_e2000(c, "#ffffff") >= 20 for c in viz_style.CLASS_COLORS)  # visible on white
    many = [str(i) for i in range(30)]
    fig = viz.tsne_scatter(pd.DataFrame({"x": range(30), "y": range(30), "class": many}), "p", many)
    assert len({(t.marker.color, t.marker.symbol) for t in fig.data}) == 30


# ---------------------------------------------------------------- item 17: cluster quality in named units
def test_cluster_quality_axes_are_named_with_one_unit_each():
    q = pd.DataFrame({"panel": ["Pre-trained", "Task Arithmetic", "PERU-FFT (Task Arithmetic) 10%"],
                      "method": ["Pre-trained", "Task Arithmetic", "PERU-FFT (Task Arithmetic)"],
                      "silhouette": [0.12345, -0.05, 0.4], "knn_accuracy": [0.61, 0.755, 0.9]})
    fig = viz.cluster_quality_bars(q)
    titles = {fig.layout[k].title.text for k in fig.layout if k.startswith(("xaxis", "yaxis"))}
    assert "value" not in titles
    sil, knn = fig.data
    assert sil.xaxis == "x" and knn.xaxis == "x2"
    assert fig.layout.xaxis.title.text.startswith("silhouette") and "-1" in fig.layout.xaxis.title.text
    assert fig.layout.xaxis2.title.text.endswith("(%)") and list(fig.layout.xaxis2.range) == [0, 100]
    assert list(knn.x) == [61.0, 75.5, 90.0] and list(knn.text) == ["61.00%", "75.50%", "90.00%"]
    assert list(sil.x) == pytest.approx([0.123, -0.05, 0.4]) and fig.layout.xaxis.range[0] < -0.05
    assert list(sil.y) == list(q["panel"])  # every panel named on the axis
    width = 565 - 200  # a 1024-px window, less the panel names
    for ax in (fig.layout.xaxis, fig.layout.xaxis2):  # the two titles sit side by side: each fits its half
        assert _text_px(ax.title.text, ax.title.font.size or 14) <= (ax.domain[1] - ax.domain[0]) * width, ax.title.text
