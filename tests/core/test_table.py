"""Issue 14 item 9: accuracy in percent with 2 decimals in every table and CSV (result rows hold fractions)."""
from __future__ import annotations

import io

import pandas as pd

from peru_core.table import (accuracy_percent, fmt_accuracy, format_table, paper_csv, paper_table,
                             results_csv)

ROWS = pd.DataFrame([
    {"spec_key": "a", "label": "Pre-trained", "task": "mnist", "accuracy": 0.57461, "params": 10, "bytes": 48,
     "cached": True},
    {"spec_key": "a", "label": "Pre-trained", "task": "shapes", "accuracy": 0.58, "params": 10, "bytes": 48,
     "cached": True},
    {"spec_key": "b", "label": "Single-Task", "task": "mnist", "accuracy": 0.701333, "params": 20, "bytes": 96,
     "cached": False},
    {"spec_key": "b", "label": "Single-Task", "task": "shapes", "accuracy": 1.0, "params": 20, "bytes": 96,
     "cached": False},
])


def test_one_rule():
    assert accuracy_percent(0.57461) == 57.46 and fmt_accuracy(0.58) == "58.00"
    assert list(accuracy_percent(ROWS["accuracy"])) == [57.46, 58.0, 70.13, 100.0]


def test_results_csv_is_percent_with_two_decimals():
    text = results_csv(ROWS)
    back = pd.read_csv(io.StringIO(text), dtype=str)
    assert list(back["accuracy (%)"]) == ["57.46", "58.00", "70.13", "100.00"]
    assert "accuracy" not in back.columns and "cached" not in back.columns
    assert list(back["bytes"]) == ["48", "48", "96", "96"]


def test_paper_table_and_csv():
    table = paper_table(ROWS, {"mnist": "MNIST"})
    assert list(table.columns) == ["MNIST", "shapes", "Avg", "params", "bytes"]
    assert table.loc["Pre-trained", "Avg"] == 57.73  # mean of 57.461 and 58.0, then rounded
    lines = paper_csv(table).splitlines()
    assert lines[1] == "Pre-trained,57.46,58.00,57.73,10,48"
    assert lines[2] == "Single-Task,70.13,100.00,85.07,20,96"
    assert "57.46" in format_table(table) and "58.00" in format_table(table)
