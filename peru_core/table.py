"""Tables and CSVs of results, and the one rule for showing accuracy: percent with 2 decimals, everywhere.

Result rows hold accuracy as a fraction in [0, 1] (what evaluation returns); every table, CSV, page and terminal
output shows it through :func:`accuracy_percent` / :func:`fmt_accuracy` (built on :mod:`peru_core.fmt`). The paper's layout:
https://arxiv.org/abs/2310.01886, Table 1.
"""
from __future__ import annotations

from typing import Union

import pandas as pd

from peru_core.errors import PeruError
from peru_core.fmt import DECIMALS as ACCURACY_DECIMALS, pct
ACCURACY_COLUMN = "accuracy (%)"

Number = Union[float, int]


def accuracy_percent(accuracy: Union[Number, pd.Series]) -> Union[float, pd.Series]:
    """A fraction in [0, 1] as a percent rounded to 2 decimals (a number or a pandas Series)."""
    if isinstance(accuracy, pd.Series):
        return (accuracy.astype(float) * 100).round(ACCURACY_DECIMALS)
    return pct(accuracy)


def fmt_percent(percent: Number) -> str:
    """A value already in percent as text with 2 decimals: ``57.46``, ``58.00``."""
    return f"{float(percent):.{ACCURACY_DECIMALS}f}"


def fmt_accuracy(accuracy: Number) -> str:
    """A fraction in [0, 1] as percent text with 2 decimals (no % sign): ``0.5746 -> "57.46"``."""
    return fmt_percent(float(accuracy) * 100)


ESTIMATE_DECIMALS = 1  # an estimate's interval spans points: more decimals would claim precision it lacks


def fmt_estimate(accuracy: Number, low: Number, high: Number) -> str:
    """A quick estimate as text, marked as one: ``0.831, 0.794, 0.862 -> "83.1 (est. 79.4-86.2)"``."""
    d = ESTIMATE_DECIMALS
    return f"{float(accuracy) * 100:.{d}f} (est. {float(low) * 100:.{d}f}-{float(high) * 100:.{d}f})"


def exact_only(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` after checking that none is an estimate: tables of the paper and CSVs show exact numbers only."""
    if "estimate" in rows.columns and rows["estimate"].astype(bool).any():
        raise PeruError("These rows include quick estimates; tables and CSVs take exact rows only (wait for the "
                        "full evaluation).")
    return rows.drop(columns=[c for c in ("estimate", "low", "high") if c in rows.columns])


def results_csv(rows: pd.DataFrame) -> str:
    """Tidy result rows (one per spec and task, as ``experiments.run_spec`` returns them) as CSV text, accuracy in
    percent with 2 decimals under ``accuracy (%)``; #params and bytes as whole numbers."""
    out = exact_only(rows)
    out = out.drop(columns=[c for c in ("cached",) if c in out.columns]).copy()
    if "accuracy" in out.columns:
        out.insert(int(out.columns.get_loc("accuracy")), ACCURACY_COLUMN, out.pop("accuracy").map(fmt_accuracy))
    return out.to_csv(index=False)


def paper_table(rows: pd.DataFrame, task_labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per spec (in first-seen order): accuracy per task and its average in percent (2 decimals; the
    average is taken before rounding), #params, bytes."""
    if rows.empty:
        return pd.DataFrame()
    rows = exact_only(rows)
    order = list(dict.fromkeys(rows["label"]))
    tasks = list(dict.fromkeys(rows["task"]))
    wide = rows.pivot_table(index="label", columns="task", values="accuracy", aggfunc="first")[tasks] * 100
    wide["Avg"] = wide[tasks].mean(axis=1)
    wide = wide.round(ACCURACY_DECIMALS)
    costs = rows.groupby("label")[["params", "bytes"]].first()
    wide = wide.join(costs).loc[order]
    wide = wide.rename(columns=task_labels or {})
    wide.index.name = "method"
    return wide


def paper_csv(table: pd.DataFrame) -> str:
    """:func:`paper_table` as CSV text: every accuracy with exactly 2 decimals, #params and bytes as integers."""
    return table.to_csv(float_format=f"%.{ACCURACY_DECIMALS}f")


def format_table(table: pd.DataFrame) -> str:
    """Plain-text rendering for the terminal: accuracies with 2 decimals, #params in M, bytes in MB."""
    if table.empty:
        return "(no rows)"
    shown = table.copy()
    acc_cols = [c for c in shown.columns if c not in ("params", "bytes")]
    shown[acc_cols] = shown[acc_cols].map(fmt_percent)
    shown["#params (M)"] = (table["params"] / 1e6).map(lambda v: f"{v:.3f}")
    shown["MB"] = (table["bytes"] / 1e6).map(lambda v: f"{v:.2f}")
    return shown.drop(columns=["params", "bytes"]).to_string()
