"""Plotly figure builders over tidy result frames (no streamlit), for the dashboard and scripts.

Input frames are those of ``peru_core.experiments.run_spec``: one row per (spec, task) with ``spec_key, label,
method, mode, keep, rank, scope, task, accuracy (0-1), params, bytes, task_params, task_bytes``. The figures mirror
the PERU paper (https://arxiv.org/abs/2310.01886): Table 1 (per-task accuracy), Figures 1/2/5-7 (accuracy against
parameters and m%/q), Figures 3/4 (t-SNE).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from peru_core import fmt
from peru_core.layer_names import readable as layer_name  # noqa: F401  (re-exported for pages)
from peru_core.viz_axes import log_ticks, sci, set_log_axis
from peru_core.viz_style import CLASS_COLORS, class_symbols, color_map, distinct_colors, ordered, style, symbol_map

REFERENCE_MODES = ("pretrained", "single-task")
AXIS = {"params": "#params (shared + T x per task)", "bytes": "bytes (shared + T x per task, with indices)",
        "task_params": "extra #params per task", "task_bytes": "extra bytes per task"}
ACCURACY = "accuracy (%)"
_SPEC_COLS = ("label", "method", "mode", "source", "merge", "keep", "rank", "scope", "params", "bytes",
              "task_params", "task_bytes")


def fmt_count(n: float) -> str:
    """``1234567 -> '1.23M'`` (SI prefixes, as on the log axes)."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def fmt_bytes(n: float) -> str:
    """``1.5e6 -> '1.5 MB'`` (decimal units: 1 MB = 10^6 bytes)."""
    return fmt_count(n).replace("k", " kB").replace("M", " MB").replace("G", " GB").replace("T", " TB") \
        if abs(n) >= 1e3 else f"{n:.0f} B"


def fmt_sci(x: float, digits: int = 3) -> str:
    """``1.234e-05 -> '1.23e-5'``, ``0.0123 -> '0.0123'`` (``digits`` significant digits, as on the log axes)."""
    return f"{x:.{digits}g}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


# ---------------------------------------------------------------- tables
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per spec: its columns plus the average accuracy over tasks (first-seen order kept)."""
    if df.empty:
        return pd.DataFrame(columns=["spec_key", *_SPEC_COLS, "accuracy", "tasks"])
    cols = [c for c in _SPEC_COLS if c in df.columns]
    g = df.groupby("spec_key", sort=False)
    out = g[cols].first()
    out["accuracy"] = g["accuracy"].mean()
    out["tasks"] = g["task"].nunique()
    return out.reset_index()


def accuracy_table(df: pd.DataFrame, tasks: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The paper's Table 1 layout: a row per method, a column per task, then Avg, #params and bytes.
    Accuracies in percent rounded to 2 decimals (:func:`peru_core.fmt.pct`; Avg is the mean of the unrounded
    accuracies); show it with :func:`table_style` so every cell has 2 decimals."""
    if df.empty:
        return pd.DataFrame()
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(df["task"]))
    raw = df.pivot_table(index="spec_key", columns="task", values="accuracy", sort=False).reindex(columns=tasks)
    acc = raw.map(lambda v: fmt.pct(v) if pd.notna(v) else np.nan)
    s = summary(df).set_index("spec_key")
    acc["Avg"] = raw.mean(axis=1).map(fmt.pct)
    acc["#params"] = s["params"].map(fmt_count)
    acc["bytes"] = s["bytes"].map(fmt_bytes)
    acc["extra per task"] = s["task_bytes"].map(fmt_bytes)
    acc.index = s.loc[acc.index, "label"].to_numpy()
    acc.index.name = "method"
    return acc


def table_style(table: pd.DataFrame):
    """A pandas Styler for ``st.table``/``st.dataframe``: every accuracy with 2 decimals (``58.00``, not ``58``)."""
    nums = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    return table.style.format(f"{{:.{fmt.DECIMALS}f}}", subset=nums, na_rep="–")


def task_bars(df: pd.DataFrame, height: int = 380) -> go.Figure:
    """Grouped bars of per-task accuracy (and the average), one colour per method family."""
    cols = ["label", "method", "task", "accuracy"] + (["source"] if "source" in df else [])
    rows = df[cols].copy()
    if "source" not in rows:
        rows["source"] = "full"
    avg = rows.groupby(["label", "method", "source"], sort=False, as_index=False)["accuracy"].mean().assign(
        task="Avg")
    rows = pd.concat([rows, avg], ignore_index=True)
    rows[ACCURACY] = rows["accuracy"] * 100.0  # exact positions; text and hover show 2 decimals
    labels = list(dict.fromkeys(rows["label"]))
    fam = dict(zip(rows["label"], rows["method"]))
    fig = px.bar(rows, x="task", y="accuracy (%)", color="label", barmode="group", height=height,
                 color_discrete_map={lab: style(fam[lab]).color for lab in labels},
                 category_orders={"label": labels}, hover_data={"method": True, "accuracy (%)": ":.2f"})
    hatch = dict(zip(rows["label"], rows["source"].map({"lora": "/", "llora": "x"})))
    for trace in fig.data:  # adapter rows hatched: Single-Task, [LoRA] and [L-LoRA] share a colour
        if isinstance(hatch.get(trace.name), str):
            trace.marker.pattern.shape = hatch[trace.name]
    # the legend above the plot, wrapping as needed: beside it, long labels ("TALL masks (lam=1,
    # tall_mask_lambda=0.6)") squeezed the bars to a sliver in a narrow column
    fig.update_layout(yaxis_range=[0, 100], legend_title_text="", margin=dict(t=30, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    return fig


# ---------------------------------------------------------------- trade-offs
def pareto_mask(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """True where no other point has ``x' <= x`` and ``y' >= y`` with one strict (fewer params, more accuracy)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    le, ge = x[None, :] <= x[:, None], y[None, :] >= y[:, None]
    strict = (x[None, :] < x[:, None]) | (y[None, :] > y[:, None])
    return ~(le & ge & strict).any(axis=1)


def _series(s: pd.DataFrame) -> pd.Series:
    per = s["scope"].fillna("global").eq("per-tensor") if "scope" in s else False
    return s["method"] + np.where(per, " (per-tensor)", "")


def cost_text(x: str) -> "callable":
    """The tick/hover formatter of a cost column: bytes in kB/MB (``fmt_bytes``), counts with k/M (``fmt_count``)."""
    return fmt_bytes if "bytes" in x else fmt_count


def _reference_lines(fig: go.Figure, refs: pd.DataFrame) -> None:
    """Pre-trained (dotted) and Single-Task (dashed) as horizontal lines labelled with their accuracy."""
    for mode, dash in zip(REFERENCE_MODES, ("dot", "dash")):
        for _, r in refs[refs["mode"] == mode].iterrows():
            fig.add_hline(y=r[ACCURACY], line_dash=dash, line_color=style(r["method"]).color, opacity=0.6,
                          annotation_text=f"{r['label']} {fmt.pct_text(r['accuracy'])}",
                          annotation_position="bottom right")


def tradeoff(df: pd.DataFrame, x: str = "params", frontier: bool = True, highlight: Optional[str] = None,
             height: int = 440) -> go.Figure:
    """Average accuracy against ``x`` (``params`` or ``bytes``, log axis), one line per method family over its
    m% / q settings; Pre-trained and Single-Task as dashed reference lines; the Pareto frontier marked.
    ``highlight`` is a spec key drawn larger (the current setting)."""
    s = summary(df)
    s[ACCURACY] = s["accuracy"] * 100.0  # exact positions; text and hover show 2 decimals
    s["series"] = _series(s)
    s["setting"] = s["keep"].map(lambda k: f"m={k:g}%" if pd.notna(k) else "") + \
        s["rank"].map(lambda r: f"q={int(r)}" if pd.notna(r) else "")
    s["cost"] = s[x].map(cost_text(x))
    s = s.sort_values(x)
    fams = ordered(s["method"])
    fig = px.line(s, x=x, y=ACCURACY, color="method", symbol="method", line_group="series", markers=True,
                  log_x=True, height=height, custom_data=["spec_key"], hover_name="label",
                  hover_data={"method": False, "setting": True, x: False, "cost": True, ACCURACY: ":.2f"},
                  color_discrete_map=color_map(fams), symbol_map=symbol_map(fams), category_orders={"method": fams},
                  labels={x: AXIS.get(x, x)})
    fig.update_traces(marker_size=9)
    _reference_lines(fig, s)
    if frontier and len(s) > 1:
        f = s[pareto_mask(s[x], s[ACCURACY])].sort_values(x)
        fig.add_trace(go.Scatter(x=f[x], y=f[ACCURACY], mode="lines", line_shape="hv", name="Pareto frontier",
                                 line=dict(color="rgba(0,0,0,0.35)", width=6), hoverinfo="skip"))
    if highlight is not None and (s["spec_key"] == highlight).any():
        h = s[s["spec_key"] == highlight]
        fig.add_trace(go.Scatter(x=h[x], y=h[ACCURACY], mode="markers", name="current setting",
                                 marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(color="black", width=2))))
    set_log_axis(fig, s[x], cost_text(x), "x", showgrid=True)
    fig.update_layout(legend_title_text="", margin=dict(t=30, b=10))
    return fig


def knob_curve(df: pd.DataFrame, knob: str = "keep", height: int = 400) -> go.Figure:
    """Average accuracy against m% (``knob="keep"``, Figure 7) or q (``"rank"``, Figure 6), one line per family,
    with Pre-trained and Single-Task as reference lines."""
    s = summary(df)
    s[ACCURACY] = s["accuracy"] * 100.0  # exact positions; text and hover show 2 decimals
    refs = s[s["mode"].isin(REFERENCE_MODES)]
    s = s[s[knob].notna()].copy()
    s["series"] = _series(s)
    s = s.sort_values(knob)
    fams = ordered(s["method"])
    title = "m: top-m% kept per task" if knob == "keep" else "q: rank kept per LoRA matrix"
    fig = px.line(s, x=knob, y=ACCURACY, color="method", symbol="method", line_group="series", markers=True,
                  height=height, hover_name="label", color_discrete_map=color_map(fams), symbol_map=symbol_map(fams),
                  category_orders={"method": fams}, labels={knob: title}, hover_data={ACCURACY: ":.2f"})
    _reference_lines(fig, refs)
    fig.update_layout(legend_title_text="", margin=dict(t=30, b=10))
    return fig


def per_task_tradeoff(df: pd.DataFrame, x: str = "params", wrap: int = 2, panel_height: int = 210) -> go.Figure:
    """Accuracy against ``x`` for each task (a panel per task, ``wrap`` per row); same styles as :func:`tradeoff`.
    One x-axis title for the whole grid (a title per narrow panel would overlap its neighbours') and the legend
    under it, so the panels get the full width."""
    d = df.copy()
    d[ACCURACY] = d["accuracy"] * 100.0  # exact positions; text and hover show 2 decimals
    d["series"] = _series(d)
    d["cost"] = d[x].map(cost_text(x))
    d = d.sort_values(x)
    fams = ordered(d["method"])
    rows = -(-d["task"].nunique() // wrap)
    fig = px.line(d, x=x, y=ACCURACY, color="method", symbol="method", line_group="series", markers=True,
                  facet_col="task", facet_col_wrap=wrap, log_x=True, height=panel_height * rows + 150,
                  hover_name="label", hover_data={"method": False, x: False, "cost": True, ACCURACY: ":.2f"},
                  color_discrete_map=color_map(fams), symbol_map=symbol_map(fams),
                  category_orders={"method": fams}, facet_col_spacing=0.06,
                  facet_row_spacing=min(55 / (panel_height * rows + 50), 0.3))  # ~55 px between rows
    set_log_axis(fig, d[x], cost_text(x), "x", max_labels=5, snap=0.0)
    fig.for_each_xaxis(lambda a: a.update(title_text=""))
    fig.for_each_yaxis(lambda a: a.update(title_text=""))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.add_annotation(text=AXIS.get(x, x), x=0.5, y=0, xref="paper", yref="paper", yanchor="top", yshift=-28,
                       showarrow=False, name="x title")
    fig.add_annotation(text=ACCURACY, x=0, y=0.5, xref="paper", yref="paper", xanchor="right", xshift=-38,
                       textangle=-90, showarrow=False, name="y title")
    plot_px = panel_height * rows + 150 - 40 - 60  # height less the top and bottom margins
    fig.update_layout(legend_title_text="", margin=dict(t=40, b=60, l=80),
                      legend=dict(orientation="h", x=0, y=-62 / plot_px, yanchor="top"))  # under the x title
    return fig


def best_under_budget(df: pd.DataFrame, budget_mb: float, exclude_modes: Sequence[str] = ()) -> Optional[pd.Series]:
    """The computed setting with the highest average accuracy whose extra bytes per task fit ``budget_mb``
    (1 MB = 10^6 bytes); ties go to the smaller part. None when nothing fits."""
    s = summary(df)
    s = s[~s["mode"].isin(exclude_modes) & (s["task_bytes"] <= budget_mb * 1e6 + 1e-9)]
    if s.empty:
        return None
    return s.sort_values(["accuracy", "task_bytes"], ascending=[False, True]).iloc[0]


def budget_sentence(df: pd.DataFrame, budget_mb: float) -> str:
    """The budget question answered in one sentence, against Single-Task when it is computed."""
    best = best_under_budget(df, budget_mb)
    if best is None:
        return (f"No computed setting fits in {budget_mb:g} MB extra per task; raise the budget or compute "
                "smaller settings (lower m% or q).")
    s = summary(df)
    single = s[s["mode"] == "single-task"]
    ref = (f" (Single-Task: {fmt.pct_text(single['accuracy'].max())})" if not single.empty else "")
    return (f"With {budget_mb:g} MB extra per task, **{best['label']}** keeps the most accuracy: "
            f"{fmt.pct_text(best['accuracy'])} on average{ref}, using {fmt_bytes(best['task_bytes'])} per task.")


# ---------------------------------------------------------------- spectra
def energy_curves(spectra: pd.DataFrame, by: Optional[str] = "layer") -> pd.DataFrame:
    """From tidy singular values (columns ``index`` 1..r within each matrix, ``sigma``, and ``by``): for q = 0..r
    the kept energy E(q) = sum_{i<=q} s_i^2 / sum_i s_i^2 and the relative Frobenius error of the rank-q
    truncation sqrt(1 - E(q)). Matrices in one group are truncated together (same q), so their s_i^2 add up;
    ``by=None`` pools everything (one q for every layer, as PERU-LoRA uses)."""
    d = spectra.assign(s2=spectra["sigma"].astype(float) ** 2)
    groups = d.groupby(by, sort=False) if by else [("all", d)]
    out = []
    for name, g in groups:
        s2 = g.groupby("index")["s2"].sum().sort_index().to_numpy()
        total = s2.sum()
        energy = np.clip(np.concatenate([[0.0], np.cumsum(s2)]) / (total if total > 0 else 1.0), 0.0, 1.0)
        out.append(pd.DataFrame({by or "group": name, "q": np.arange(len(energy)), "energy": energy,
                                 "relative error": np.sqrt(1.0 - energy)}))
    return pd.concat(out, ignore_index=True)


def spectrum(spectra: pd.DataFrame, color: str = "layer", highlight: Optional[str] = None,
             height: Optional[int] = None) -> go.Figure:
    """Singular values against their index (log y, labelled ``1e-6 ... 0.01 ... 1``), one line per ``color`` (layer
    or task), every line named in the legend (which scrolls when long) and in distinct colours; ``highlight`` is
    the layer drawn thicker (the one the energy view shows)."""
    names = list(dict.fromkeys(spectra[color]))
    colors, dashes = distinct_colors(len(names))
    d = spectra[spectra["sigma"] > 0]  # exact zeros have no place on a log axis
    fig = go.Figure()
    for name, c, dash in zip(names, colors, dashes):
        g = d[d[color] == name]
        wide = highlight is not None and name == highlight
        fig.add_trace(go.Scatter(x=g["index"], y=g["sigma"], name=str(name), mode="lines+markers",
                                 line=dict(color=c, dash=dash, width=4 if wide else 1.8), marker=dict(size=4),
                                 hovertemplate=f"{name}<br>s_%{{x}} = %{{y:.3g}}<extra></extra>"))
    fig.update_xaxes(title_text="index i")
    if not d.empty:
        set_log_axis(fig, d["sigma"], axis="y", showgrid=True)
    fig.update_yaxes(title_text="singular value s_i")
    # The legend below the plot, in columns: at the right it took half of a 1024-px page and scrolled.
    rows = -(-len(names) // 2)
    fig.update_layout(height=height or 430 + 21 * min(rows, 20), margin=dict(t=30, b=10), showlegend=True,
                      legend=dict(title_text="", orientation="h", x=0, y=-0.12, yanchor="top", entrywidth=0.5,
                                  entrywidthmode="fraction", font_size=12))
    return fig


def energy_figure(curves: pd.DataFrame, q: int, by: str = "layer", height: int = 380) -> go.Figure:
    """Cumulative energy and relative approximation error against q, with the current q marked."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("kept energy E(q)", "relative error ‖M − M_q‖ / ‖M‖"),
                        horizontal_spacing=0.12)
    col = by if by in curves else "group"
    palette = px.colors.qualitative.Plotly
    for i, (name, g) in enumerate(curves.groupby(col, sort=False)):
        c = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=g["q"], y=g["energy"], name=str(name), line_color=c, legendgroup=str(name)), 1, 1)
        fig.add_trace(go.Scatter(x=g["q"], y=g["relative error"], name=str(name), line_color=c,
                                 legendgroup=str(name), showlegend=False), 1, 2)
    for c in (1, 2):
        fig.add_vline(x=q, line_dash="dash", line_color="black", row=1, col=c)
    fig.add_annotation(x=q, y=0.0, text=f" q={q}", showarrow=False, xanchor="left", yanchor="bottom", row=1, col=1)
    fig.update_xaxes(title_text="q")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_yaxes(tickformat=".0%", row=1, col=1)  # kept energy in %, as the caption under it
    fig.update_layout(height=height, margin=dict(t=40, b=10),
                      legend=dict(orientation="h", x=0, y=-0.2, yanchor="top", entrywidth=0.5,
                                  entrywidthmode="fraction"))
    return fig


def magnitude_histogram(values: np.ndarray, threshold: float, bins: int = 80, title: str = "",
                        height: int = 340) -> go.Figure:
    """Histogram of |u_t| over log10 magnitude (uniform bins, fast for 10^8 values) with the top-m% threshold
    marked: entries at or above it (red) are the task part that is kept."""
    a = np.abs(np.asarray(values, dtype=np.float32).ravel())
    a = a[a > 0]
    if a.size == 0:
        return go.Figure().update_layout(title="all entries are zero", height=height)
    logs = np.log10(a)
    # The axis starts at the 0.1% quantile (a few denormal-sized entries would stretch it over ten decades);
    # smaller entries are counted in the first bar.
    sample = logs[:: max(1, logs.size // 200_000)]
    lo = float(min(np.quantile(sample, 0.001), np.log10(threshold) - 0.5 if threshold > 0 else np.inf))
    edges = np.linspace(lo, float(logs.max()) + 1e-6, bins + 1)
    logs = np.maximum(logs, lo)
    keep = a >= threshold  # the same test as top-m% selection, so the kept bars count exactly the kept entries
    fig = go.Figure()
    for name, part, color in (("dropped", ~keep, "#9aa5b1"), ("kept (top m%)", keep, "#d62728")):
        counts, _ = np.histogram(logs[part], bins=edges)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), name=name,
                             marker_color=color, customdata=10 ** ((edges[:-1] + edges[1:]) / 2),
                             hovertemplate="|u| ~ %{customdata:.3g}: %{y} entries"))
    fig.update_layout(barmode="stack")
    if threshold > 0:
        fig.add_vline(x=float(np.log10(threshold)), line_dash="dash", line_color="black",
                      annotation_text=f"threshold {threshold:.3g}", annotation_position="top right")
    # A linear axis over log10|u| (bars on plotly's log axes misplace their widths), labelled with the values.
    ticks = log_ticks(10 ** edges[0], 10 ** edges[-1], snap=0.0)  # the bars fill the range: no room to snap
    fig.update_xaxes(title_text="|entry| (log scale)", tickmode="array", tickvals=np.log10(ticks).tolist(),
                     ticktext=sci(ticks), range=[float(edges[0]), float(edges[-1])])
    fig.update_yaxes(title_text="entries")
    fig.update_layout(title=title, height=height, margin=dict(t=40, b=10), legend_title_text="")
    return fig


# ---------------------------------------------------------------- embeddings
def tsne_scatter(points: pd.DataFrame, title: str, classes: Sequence[str], height: int = 380) -> go.Figure:
    """One t-SNE panel (columns ``x, y, class``); ``classes`` fixes the colour of each class across panels. Colours
    from :data:`~peru_core.viz_style.CLASS_COLORS` (distinct for up to 20 classes); past 20 the marker changes too."""
    classes = list(classes)
    symbols = class_symbols(len(classes))
    fig = px.scatter(points, x="x", y="y", color="class", symbol="class", category_orders={"class": classes},
                     color_discrete_map={c: CLASS_COLORS[i % len(CLASS_COLORS)] for i, c in enumerate(classes)},
                     symbol_map=dict(zip(classes, symbols)), height=height, title=title,
                     hover_data={"x": False, "y": False})
    fig.update_traces(marker_size=6)
    fig.update_xaxes(showticklabels=False, title_text="")
    fig.update_yaxes(showticklabels=False, title_text="")
    # Legend below, so every panel keeps the same plot size.
    fig.update_layout(margin=dict(t=40, b=0, l=0, r=0), legend_title_text="", legend=dict(orientation="h", y=-0.02,
                                                                                      yanchor="top"))
    return fig


QUALITY_AXES = {"silhouette": "silhouette (-1 to 1)", "knn_accuracy": "k-NN accuracy (%)"}


def cluster_quality_bars(quality: pd.DataFrame, height: Optional[int] = None) -> go.Figure:
    """Silhouette (cosine) and k-NN accuracy per panel (columns ``panel, method, silhouette, knn_accuracy``), side by
    side: each measure on its own named axis in its own unit (silhouette unitless in [-1, 1], k-NN accuracy in %), one
    bar per panel named on the shared y axis, coloured by method family."""
    q = quality.reset_index(drop=True)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.1)
    colors = [style(m).color for m in q["method"]]
    panels = q["panel"].astype(str).tolist()
    values = {"silhouette": q["silhouette"].astype(float).round(3),
              "knn_accuracy": q["knn_accuracy"].map(fmt.pct)}
    for col, (measure, v) in enumerate(values.items(), start=1):
        unit = "%" if measure == "knn_accuracy" else ""
        fig.add_trace(go.Bar(x=v, y=panels, orientation="h", marker_color=colors, showlegend=False,
                             name=QUALITY_AXES[measure], text=[f"{x:.{2 if unit else 3}f}{unit}" for x in v],
                             textposition="auto", hovertemplate="%{y}: %{x}" + unit + "<extra></extra>"), 1, col)
        fig.update_xaxes(title_text=QUALITY_AXES[measure], title_font_size=13, row=1, col=col)
    fig.update_xaxes(range=[min(-0.05, float(values["silhouette"].min()) - 0.05), 1.0], row=1, col=1)
    fig.update_xaxes(range=[0, 100], ticksuffix="%", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)  # first panel on top, as on the page
    fig.update_layout(height=height or 110 + 34 * len(q), margin=dict(t=20, b=10))
    return fig
