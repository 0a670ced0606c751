"""Quick estimates in the Merge lab: a per-task table whose estimated cells say so, shown while the exact
evaluation runs (:mod:`peru_core.estimate`; PERU: https://arxiv.org/abs/2310.01886, Table 1's layout)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from peru_core.estimate import DEFAULT_FRACTION
from peru_core.table import ESTIMATE_DECIMALS, fmt_accuracy, fmt_estimate

CAPTION = (f"**est.** marks a quick estimate: the accuracy on a fixed, class-stratified {DEFAULT_FRACTION:.0%} of "
           "each test set, with its 95% confidence interval (Wilson). The full test sets are being evaluated in "
           "the same computation; their exact numbers replace the estimates when it finishes.")


def estimate_table(rows: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """One row per spec (first-seen order), a text cell per task and the average: exact rows with 2 decimals,
    estimates as ``83.1 (est. 79.4-86.2)`` (their average as ``80.2 (est.)``)."""
    out = {}
    for _, g in rows.groupby("spec_key", sort=False):
        by = g.set_index("task")
        cells = {}
        for t in tasks:
            r = by.loc[t]
            cells[t] = fmt_estimate(r["accuracy"], r["low"], r["high"]) if r["estimate"] else fmt_accuracy(
                r["accuracy"])
        avg = float(by.loc[list(tasks), "accuracy"].mean())
        cells["Avg"] = (f"{avg * 100:.{ESTIMATE_DECIMALS}f} (est.)" if by["estimate"].any()
                        else fmt_accuracy(avg))
        out[g["label"].iloc[0]] = cells
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "method"
    return table
