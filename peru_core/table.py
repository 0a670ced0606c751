"""The paper's table layout (https://arxiv.org/abs/2310.01886, Table 1) from tidy result rows."""
from __future__ import annotations

import pandas as pd


def paper_table(rows: pd.DataFrame, task_labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per spec (in first-seen order): accuracy per task and its average in percent, #params, bytes."""
    if rows.empty:
        return pd.DataFrame()
    order = list(dict.fromkeys(rows["label"]))
    tasks = list(dict.fromkeys(rows["task"]))
    wide = rows.pivot_table(index="label", columns="task", values="accuracy", aggfunc="first")[tasks] * 100
    wide["Avg"] = wide[tasks].mean(axis=1)
    costs = rows.groupby("label")[["params", "bytes"]].first()
    wide = wide.join(costs).loc[order]
    wide = wide.rename(columns=task_labels or {})
    wide.index.name = "method"
    return wide


def format_table(table: pd.DataFrame) -> str:
    """Plain-text rendering for the terminal: accuracies with 2 decimals, #params in M, bytes in MB."""
    if table.empty:
        return "(no rows)"
    shown = table.copy()
    acc_cols = [c for c in shown.columns if c not in ("params", "bytes")]
    shown[acc_cols] = shown[acc_cols].map(lambda v: f"{v:.2f}")
    shown["#params (M)"] = (table["params"] / 1e6).map(lambda v: f"{v:.3f}")
    shown["MB"] = (table["bytes"] / 1e6).map(lambda v: f"{v:.2f}")
    return shown.drop(columns=["params", "bytes"]).to_string()
