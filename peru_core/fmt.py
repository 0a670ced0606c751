"""The one display rule for accuracies: percent with 2 decimals, on every page, table, caption and CSV.

Result frames keep accuracy as a fraction (0-1, what the evaluator measures); everything a person reads goes
through :func:`pct` (numbers) or :func:`pct_text` (text), so no page shows 57.461 next to 70.1333 next to 58.
"""
from __future__ import annotations

DECIMALS = 2


def pct(x: float) -> float:
    """A fraction as a percent rounded to 2 decimals: ``0.574613 -> 57.46``."""
    return round(float(x) * 100.0, DECIMALS)


def pct_text(x: float, sign: bool = False) -> str:
    """A fraction as percent text with 2 decimals: ``0.58 -> '58.00%'`` (``sign``: ``'+1.20%'``)."""
    return f"{pct(x):{'+' if sign else ''}.{DECIMALS}f}%"


def points_text(x: float) -> str:
    """A difference of two fractions in percentage points: ``-0.0123 -> '-1.23 points'``."""
    return f"{pct(x):+.{DECIMALS}f} points"
