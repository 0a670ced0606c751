"""Figures and one-line readings of the Spectra page's ablation views (no streamlit): the task-vector cosine heatmap,
where a task part lives per layer, and the paper's Table 6 (truncate the LoRA factors or their product).

Every sentence is computed from the numbers it describes. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from peru_core import fmt
from peru_core.factor_truncation import FACTORS, PRODUCT
from peru_core.viz_style import style

VARIANT_COLORS = {PRODUCT: style("PERU-LoRA").color, FACTORS: "#555555"}
VARIANT_SHORT = {PRODUCT: "Approx(BA)", FACTORS: "Approx(B) Approx(A)"}


# ---------------------------------------------------------------- task-vector similarity
def cosine_heatmap(names: Sequence[str], matrix: np.ndarray, title: str, height: int = 0) -> go.Figure:
    """T x T cosines with every value printed; the colour scale is centred at 0 and spans the largest off-diagonal
    |cos| (the diagonal, always 1, is drawn at the darkest red), so small similarities still show."""
    m = np.asarray(matrix, dtype=float)
    off = np.abs(m[~np.eye(len(m), dtype=bool)]) if len(m) > 1 else np.array([])
    span = float(np.nanmax(off)) if off.size and np.isfinite(off).any() else 1.0
    span = max(span, 0.05)
    text = [["–" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in m]
    fig = go.Figure(go.Heatmap(z=m, x=list(names), y=list(names), zmid=0.0, zmin=-span, zmax=span,
                               colorscale="RdBu_r", text=text, texttemplate="%{text}", textfont_size=12,
                               colorbar=dict(title=dict(text="cosine"), thickness=14),
                               hovertemplate="%{y} · %{x}<br>cos = %{z:.4f}<extra></extra>"))
    n = len(names)
    fig.update_layout(title=dict(text=title, font_size=14), height=height or max(320, 110 + 46 * n),
                      margin=dict(t=40, b=10, l=10, r=10))
    fig.update_xaxes(title_text="task", tickangle=-35 if n > 4 else 0)
    fig.update_yaxes(title_text="task", autorange="reversed")
    return fig


def similarity_sentence(names: Sequence[str], matrix: np.ndarray, where: str) -> str:
    """The most and least similar pair of tasks and the mean off-diagonal cosine (one line)."""
    m = np.asarray(matrix, dtype=float)
    iu = np.triu_indices(len(m), 1)
    vals = m[iu]
    ok = np.isfinite(vals)
    if not ok.any():
        return f"{where}: fewer than two tasks with a non-zero update, so no pair to compare."
    i_hi, i_lo = np.nanargmax(np.where(ok, vals, -np.inf)), np.nanargmin(np.where(ok, vals, np.inf))
    pair = lambda j: f"{names[iu[0][j]]} and {names[iu[1][j]]}"  # noqa: E731
    if ok.sum() == 1:
        return f"{where}: the two tasks' update vectors have cosine {vals[i_hi]:.3f}."
    return (f"{where}: most similar {pair(i_hi)} (cos {vals[i_hi]:.3f}), least similar {pair(i_lo)} "
            f"(cos {vals[i_lo]:.3f}); mean over the {int(ok.sum())} pairs {np.nanmean(vals):.3f}.")


# ---------------------------------------------------------------- where the task part lives
def layout_bars(frame: pd.DataFrame, value: str, title: str, label: str) -> go.Figure:
    """One horizontal bar per tensor (in model order, top to bottom): ``value`` is ``fraction`` or ``share`` (drawn
    in %) or ``kept`` (a count, e.g. the kept rank); the hover gives the kept count and the tensor size."""
    d = frame.copy()
    x = d[value] * 100.0 if value in ("fraction", "share") else d[value]
    text = [f"{v:.1f}%" if value in ("fraction", "share") else f"{int(v)}" for v in x]
    fig = go.Figure(go.Bar(x=x, y=d["layer"], orientation="h", text=text, textposition="outside", cliponaxis=False,
                           marker_color=style("PERU-FFT (Task Arithmetic)").color,
                           customdata=np.stack([d["kept"], d["size"]], axis=1),
                           hovertemplate="%{y}<br>kept %{customdata[0]:,} of %{customdata[1]:,}<extra></extra>"))
    top = float(x.max()) if len(x) else 1.0
    fig.update_xaxes(title_text=label, range=[0, max(top, 1e-9) * 1.18], showgrid=True)
    fig.update_yaxes(title_text="", autorange="reversed", automargin=True)
    fig.update_layout(title=dict(text=title, font_size=14), height=150 + 22 * len(d), margin=dict(t=40, b=10, r=20),
                      showlegend=False)
    return fig


def layout_sentence(frame: pd.DataFrame, sparse: bool) -> str:
    """Where most of the part is, and what keeps nothing (sparse parts) or how the kept rank varies (LoRA)."""
    if frame.empty:
        return "This part has no tensors."
    top = frame.sort_values("share", ascending=False).iloc[0]
    if sparse:
        total = int(frame["kept"].sum())
        empty = int((frame["kept"] == 0).sum())
        n3 = frame.sort_values("share", ascending=False).head(3)
        return (f"{total:,} kept entries; {top['layer']} holds the most ({fmt.pct_text(top['share'])} of the part, "
                f"{fmt.pct_text(top['fraction'])} of its own entries); the 3 largest holders take "
                f"{fmt.pct_text(n3['share'].sum())}; {empty} of {len(frame)} tensors keep nothing.")
    lo, hi = int(frame["kept"].min()), int(frame["kept"].max())
    ranks = f"rank {lo}" if lo == hi else f"ranks {lo} to {hi}"
    return (f"{len(frame)} matrices keep {ranks} ({int((frame['values']).sum()):,} values); {top['layer']} holds the "
            f"largest share ({fmt.pct_text(top['share'])}), being the widest.")


# ---------------------------------------------------------------- Table 6
def truncation_error_figure(errors: pd.DataFrame, title: str) -> go.Figure:
    """Relative Frobenius error against q, one line per variant."""
    fig = go.Figure()
    for v in (PRODUCT, FACTORS):
        g = errors[errors["variant"] == v].sort_values("rank")
        fig.add_trace(go.Scatter(x=g["rank"], y=g["error"] * 100.0, name=v, mode="lines+markers",
                                 line=dict(color=VARIANT_COLORS[v], width=2.5), marker_size=8,
                                 hovertemplate=f"{VARIANT_SHORT[v]}<br>q=%{{x}}: %{{y:.2f}}%<extra></extra>"))
    _rank_axis(fig, errors["rank"])
    fig.update_yaxes(title_text="relative error ‖ΔW − approx‖_F / ‖ΔW‖_F (%)", rangemode="tozero")
    return _legend_below(fig, title)


def truncation_accuracy_figure(acc: pd.DataFrame, task: str, task_label: str, title: str) -> go.Figure:
    """Held-out accuracy against q: both variants for ``task`` (solid) and their average over tasks (dotted)."""
    fig = go.Figure()
    avg = acc.groupby(["variant", "rank"], as_index=False)["accuracy"].mean()
    n = acc["task"].nunique()
    for v in (PRODUCT, FACTORS):
        for frame, name, dash in ((acc[acc["task"] == task], f"{VARIANT_SHORT[v]}, {task_label}", "solid"),
                                  (avg, f"{VARIANT_SHORT[v]}, average of {n} tasks", "dot")):
            g = frame[frame["variant"] == v].sort_values("rank")
            fig.add_trace(go.Scatter(x=g["rank"], y=g["accuracy"] * 100.0, name=name, mode="lines+markers",
                                     line=dict(color=VARIANT_COLORS[v], dash=dash, width=2.5), marker_size=8,
                                     hovertemplate=f"{name}<br>q=%{{x}}: %{{y:.2f}}%<extra></extra>"))
    _rank_axis(fig, acc["rank"])
    fig.update_yaxes(title_text="accuracy on held-out test data (%)")
    return _legend_below(fig, title)


def _rank_axis(fig: go.Figure, ranks: pd.Series) -> None:
    qs = sorted({int(q) for q in ranks})
    fig.update_xaxes(title_text="q: rank kept per LoRA matrix", type="log" if len(qs) > 2 else "linear",
                     tickvals=qs, ticktext=[str(q) for q in qs], showgrid=True)


def _legend_below(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=dict(text=title, font_size=14), height=430, margin=dict(t=40, b=10),
                      legend=dict(orientation="h", x=0, y=-0.2, yanchor="top", title_text=""))
    return fig


def truncation_sentence(errors: pd.DataFrame) -> str:
    """The error of both variants at the smallest q, and where they meet."""
    q = int(errors["rank"].min())
    e = errors[errors["rank"] == q].set_index("variant")["error"]
    return (f"At q={q}, truncating the product leaves {fmt.pct_text(e[PRODUCT])} of the update's norm as error, "
            f"truncating each factor {fmt.pct_text(e[FACTORS])}; at q=r={int(errors['rank'].max())} both are exact.")


def accuracy_sentence(acc: pd.DataFrame) -> str:
    """Average accuracy of both variants at each q below r, in one line."""
    avg = acc.groupby(["rank", "variant"])["accuracy"].mean().unstack()
    parts = [f"q={int(q)}: {fmt.pct_text(r[PRODUCT])} vs {fmt.pct_text(r[FACTORS])}" for q, r in avg.iterrows()]
    return f"Average over {acc['task'].nunique()} tasks, product vs factors truncated: " + "; ".join(parts) + "."
