"""Figures and one-line readings of the Trade-offs page's ablation views (no streamlit): the budget planner, pruning
theta_t itself (Table 10), the number of tasks (Table 7 / Appendix B.3) and PERU-FFT on every merge (Table 5).

Every sentence is computed from the numbers it describes. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from peru_core import fmt
from peru_core.ablations import PRUNE_THETA
from peru_core.planner import Plan
from peru_core.viz import fmt_bytes
from peru_core.viz_style import style

ACC_AXIS = "average accuracy on held-out test data (%)"
MB = 1e6  # decimal units, as everywhere on the dashboard


def _legend_below(fig: go.Figure, title: str, height: int = 430, rows: int = 2) -> go.Figure:
    """Title above, legend under the x-axis title at the bottom of the figure (``rows`` lines kept free for it)."""
    fig.update_layout(title=dict(text=title, font_size=14), height=height + 24 * rows,
                      margin=dict(t=40, b=50 + 24 * rows),
                      legend=dict(orientation="h", x=0, y=0, yref="container", yanchor="bottom", title_text=""))
    return fig


# ---------------------------------------------------------------- the budget planner
def planner_figure(pareto: Sequence[Plan], greedy: Sequence[Plan], uniform: Sequence[Plan], budget: float,
                   knob_name: str, title: str) -> go.Figure:
    """Average accuracy against the bytes of all T task parts: the exact plans (a staircase: the best allocation
    for every budget), greedy's plans, one setting for all tasks, and the chosen budget as a dashed line."""
    fig = go.Figure()

    def knobs(p: Plan) -> str:
        return ", ".join(f"{t} {o.label}" for t, o in p.choice)

    for plans, name, color, shape, mode in (
            (pareto, "per-task allocation (exact, DP)", style("PERU-FFT (Task Arithmetic)").color, "hv", "lines"),
            (greedy, "per-task allocation (greedy)", "#1f77b4", None, "markers"),
            (uniform, f"one {knob_name} for all tasks", "#555555", None, "markers+lines")):
        if not plans:
            continue
        ps = sorted(plans, key=lambda p: p.bytes)
        fig.add_trace(go.Scatter(
            x=[p.bytes / MB for p in ps], y=[p.accuracy * 100.0 for p in ps], name=name, mode=mode,
            line=dict(color=color, width=2.5, shape=shape or "linear", dash="dot" if shape is None else "solid"),
            marker=dict(size=9, color=color, symbol="diamond" if "greedy" in name else "circle"),
            customdata=[knobs(p) for p in ps],
            hovertemplate=f"{name}<br>%{{x:.4g}} MB: %{{y:.2f}}%<br>%{{customdata}}<extra></extra>"))
    fig.add_vline(x=budget / MB, line_dash="dash", line_color="black",
                  annotation_text=f"budget {fmt_bytes(budget)}", annotation_position="bottom right")
    fig.update_xaxes(title_text="bytes of all T task parts (MB, 1 MB = 10^6 bytes)", showgrid=True)
    fig.update_yaxes(title_text=ACC_AXIS)
    return _legend_below(fig, title)


def planner_sentence(exact: Plan, greedy: Plan, uniform: Optional[Plan], budget: float, knob_name: str) -> str:
    """The planned average against the best single setting, with the bytes each uses."""
    head = (f"Within {fmt_bytes(budget)} for all {len(exact.choice)} task parts, the per-task allocation reaches "
            f"{fmt.pct_text(exact.accuracy)} on average using {fmt_bytes(exact.bytes)}")
    g = (f"; greedy {fmt.pct_text(greedy.accuracy)} using {fmt_bytes(greedy.bytes)}" if greedy.choice != exact.choice
         else "; greedy finds the same allocation")
    if uniform is None:
        return head + g + f"; no single {knob_name} computed for every task fits this budget."
    o = uniform.choice[0][1]
    return (head + g + f"; the best single {knob_name} for all tasks ({o.label}) reaches "
            f"{fmt.pct_text(uniform.accuracy)} using {fmt_bytes(uniform.bytes)} "
            f"({fmt.points_text(exact.accuracy - uniform.accuracy)} for the allocation).")


# ---------------------------------------------------------------- Table 10
def table10_variant(row: pd.Series) -> str:
    """Which vector was pruned, for a Table 10 row."""
    if row["method"] == PRUNE_THETA:
        return "θ_t itself (no shared model)"
    if row["mode"] == "post-pruning":
        return "v_t = θ_t − θ_0 (Post-Pruning)"
    return f"u_t = θ_t − θ* ({row['method']})"


def table10_figure(rows: pd.DataFrame, title: str) -> go.Figure:
    """Average accuracy (bars) at each m: theta_t, v_t and u_t pruned to their top-m%."""
    d = rows.assign(variant=rows.apply(table10_variant, axis=1))
    avg = d.groupby(["variant", "keep"], sort=False, as_index=False)["accuracy"].mean()
    colors = {PRUNE_THETA: "#555555", "post-pruning": style("Post-Pruning").color}
    fig = go.Figure()
    for variant, g in avg.groupby("variant", sort=False):
        first = d[d["variant"] == variant].iloc[0]
        color = colors.get(first["method"], colors.get(first["mode"], style(str(first["method"])).color))
        fig.add_trace(go.Bar(x=[f"{k:g}%" for k in g["keep"]], y=g["accuracy"] * 100.0, name=variant,
                             marker_color=color, text=[f"{v * 100:.2f}" for v in g["accuracy"]],
                             textposition="outside", cliponaxis=False,
                             hovertemplate=f"{variant}<br>m=%{{x}}: %{{y:.2f}}%<extra></extra>"))
    fig.update_xaxes(title_text="m: entries kept per task (% of the tuned part)", type="category")
    fig.update_yaxes(title_text=ACC_AXIS, range=[0, 105])
    fig.update_layout(barmode="group")
    return _legend_below(fig, title)


def table10_sentence(rows: pd.DataFrame) -> str:
    """Average accuracy of each variant at each m, in one line."""
    d = rows.assign(variant=rows.apply(table10_variant, axis=1))
    avg = d.groupby(["keep", "variant"], sort=False)["accuracy"].mean()
    parts = []
    for k in sorted(d["keep"].unique()):
        a = avg[k]
        parts.append(f"m={k:g}%: " + ", ".join(f"{v.split(' ')[0]} {fmt.pct_text(x)}" for v, x in a.items()))
    return f"Average over {d['task'].nunique()} tasks: " + "; ".join(parts) + "."


# ---------------------------------------------------------------- Table 7 / B.3
def task_count_figure(curve: pd.DataFrame, subsets: pd.DataFrame, title: str) -> go.Figure:
    """Accuracy against T: per method setting the mean over subsets (a line, bars from the lowest to the highest
    subset) and every subset's own average (faint points, the subset in the hover)."""
    fig = go.Figure()
    labels = list(dict.fromkeys(curve["label"]))
    for lab in labels:
        c = curve[curve["label"] == lab].sort_values("T")
        color = style(str(c["method"].iloc[0])).color
        s = subsets[subsets["label"] == lab]
        fig.add_trace(go.Scatter(x=s["T"], y=s["accuracy"] * 100.0, mode="markers", name=f"{lab}: each subset",
                                 marker=dict(color=color, size=7, opacity=0.35), customdata=s["subset"],
                                 hovertemplate="%{customdata}<br>T=%{x}: %{y:.2f}%<extra></extra>",
                                 showlegend=True))
        fig.add_trace(go.Scatter(
            x=c["T"], y=c["accuracy"] * 100.0, mode="lines+markers", name=f"{lab}: mean over subsets",
            line=dict(color=color, width=2.5), marker=dict(size=9, color=color, symbol=style(str(
                c["method"].iloc[0])).symbol),
            error_y=dict(type="data", symmetric=False, array=(c["high"] - c["accuracy"]) * 100.0,
                         arrayminus=(c["accuracy"] - c["low"]) * 100.0, color=color, thickness=1),
            customdata=c["subsets"], hovertemplate=f"{lab}<br>T=%{{x}}: %{{y:.2f}}% "
                                                   "(mean of %{customdata} subsets)<extra></extra>"))
    ts = sorted(int(t) for t in curve["T"].unique())
    fig.update_xaxes(title_text="T: number of tasks merged (and served)", tickvals=ts, ticktext=[str(t) for t in ts])
    fig.update_yaxes(title_text="average accuracy of the merged tasks (%)")
    return _legend_below(fig, title, height=460)


def task_count_sentence(curve: pd.DataFrame) -> str:
    """Each method setting's mean accuracy at the smallest and the largest T."""
    parts = []
    for lab, c in curve.groupby("label", sort=False):
        c = c.sort_values("T")
        lo, hi = c.iloc[0], c.iloc[-1]
        parts.append(f"{lab} {fmt.pct_text(lo['accuracy'])} at T={int(lo['T'])} → {fmt.pct_text(hi['accuracy'])} "
                     f"at T={int(hi['T'])}")
    return "Mean over subsets of each subset's average accuracy: " + "; ".join(parts) + "."


# ---------------------------------------------------------------- Table 5
def table5_figure(summary: pd.DataFrame, keep: float, title: str) -> go.Figure:
    """One pair of horizontal bars per merge: the merge alone and PERU-FFT at m% on top of it (average accuracy),
    with Pre-trained and Single-Task as dashed lines."""
    merges = summary[summary["mode"] == "merge"]
    fft = summary[summary["mode"] == "peru-fft"].set_index("merge")
    names = list(merges["method"])
    fig = go.Figure()
    fig.add_trace(go.Bar(y=names, x=merges["accuracy"] * 100.0, orientation="h", name="the merge alone",
                         marker_color="#9e9e9e", marker_pattern_shape="/",
                         text=[f"{v * 100:.2f}" for v in merges["accuracy"]], textposition="outside",
                         cliponaxis=False, hovertemplate="%{y} alone: %{x:.2f}%<extra></extra>"))
    plus = [fft.loc[m, "accuracy"] * 100.0 if m in fft.index else None for m in merges["merge"]]
    fig.add_trace(go.Bar(y=names, x=plus, orientation="h", name=f"+ PERU-FFT: top-{keep:g}% of u_t per task",
                         marker_color=style("PERU-FFT (Task Arithmetic)").color,
                         # inside the bar's end: outside, the value sat on the Single-Task line just beyond it
                         text=[f"{v:.2f}" if v is not None else "" for v in plus], textposition="inside",
                         insidetextanchor="end", textfont_color="white", hovertemplate=f"%{{y}} + PERU-FFT {keep:g}%: %{{x:.2f}}%<extra></extra>"))
    for mode, name, color in (("pretrained", "Pre-trained", "#555555"), ("single-task", "Single-Task", "#000000")):
        ref = summary[summary["mode"] == mode]
        if not ref.empty:
            fig.add_vline(x=float(ref["accuracy"].iloc[0]) * 100.0, line_dash="dash", line_color=color,
                          annotation_text=f"{name} {fmt.pct_text(ref['accuracy'].iloc[0])}",
                          annotation_position="top")
    fig.update_xaxes(title_text=ACC_AXIS, range=[0, 110])
    fig.update_yaxes(title_text="merge (shared model θ*)", autorange="reversed", automargin=True)
    fig.update_layout(barmode="group")
    return _legend_below(fig, title, height=max(360, 140 + 48 * len(names)), rows=1)


def table5_sentence(summary: pd.DataFrame, keep: float) -> str:
    """The range of the merges alone and with PERU-FFT on top, and the largest gain."""
    merges = summary[summary["mode"] == "merge"].set_index("merge")
    fft = summary[summary["mode"] == "peru-fft"].set_index("merge")
    both = merges.index.intersection(fft.index)
    if both.empty:
        return "No merge has both rows computed yet."
    gain = (fft.loc[both, "accuracy"] - merges.loc[both, "accuracy"])
    top = gain.idxmax()
    return (f"Over {len(both)} merges, alone {fmt.pct_text(merges.loc[both, 'accuracy'].min())} to "
            f"{fmt.pct_text(merges.loc[both, 'accuracy'].max())}; with PERU-FFT {keep:g}% on top "
            f"{fmt.pct_text(fft.loc[both, 'accuracy'].min())} to {fmt.pct_text(fft.loc[both, 'accuracy'].max())}; "
            f"the largest gain is on {merges.loc[top, 'method']} ({fmt.points_text(gain[top])}).")
