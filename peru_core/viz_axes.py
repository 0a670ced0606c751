"""Tick labels for log axes that a reader can read: several labelled ticks on every axis, each a whole value in
one unit (``500 kB, 1 MB, 2 MB``, ``1e-6, 1e-4, 0.01``), never plotly's bare minor digits (``5 2 1 5 2 0.1``),
SI letters (``100u, 10n``) or a unit on some ticks only (``5M, 10MB, 20M``).

Plotly chooses log ticks from the axis length in pixels, so a narrow range or a narrow panel can leave a single
label; we pick the values ourselves (``tickvals``/``ticktext``) from the data range, coarse to fine, until there
are at least ``min_labels`` of them.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

# mantissas of the candidate tick sets per decade, coarse to fine
_LADDER: tuple[tuple[float, ...], ...] = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
                                          (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
PAD = 0.04  # decades of room left on each side of the data
MAX_SNAP = 0.35  # decades an end may move out to reach a tick


def _nice_linear(lo: float, hi: float, n: int) -> list[float]:
    """At least ``n`` evenly spaced round values in [lo, hi] (steps of 1, 2, 2.5 or 5 x 10^k)."""
    span = hi - lo
    step = 10.0 ** math.floor(math.log10(span)) if span > 0 else abs(lo) or 1.0
    while True:
        for m in (5.0, 2.5, 2.0, 1.0):
            s = step * m
            ticks = [k * s for k in range(math.ceil(lo / s - 1e-9), math.floor(hi / s + 1e-9) + 1)]
            if len(ticks) >= n:
                return [float(f"{t:.12g}") for t in ticks]
        step /= 10.0


def log_ticks(lo: float, hi: float, min_labels: int = 3, max_labels: int = 8, snap: float = 0.0) -> list[float]:
    """Round tick values inside [lo, hi] (both > 0) for a log axis (``snap``: see :func:`log_scale`)."""
    return log_scale(lo, hi, min_labels, max_labels, snap)[0]


def log_scale(lo: float, hi: float, min_labels: int = 3, max_labels: int = 8,
              snap: float = 0.25) -> tuple[list[float], float, float]:
    """Round ticks for a log axis over [lo, hi] (both > 0), and the range to draw: decades when the range is wide
    (thinned to at most ``max_labels``), 1-3, 1-2-5 or finer mantissas when it is narrower, evenly spaced values
    when it is narrower than that; always at least ``min_labels``. An end of the range moves out to the next tick
    when that tick is within ``snap`` of the range's length (and 0.35 decades), so the axis does not start or end with a
    long unlabelled stretch."""
    if not (lo > 0 and hi > 0):
        raise ValueError(f"log ticks need a positive range, got [{lo}, {hi}]")
    lo, hi = min(lo, hi), max(lo, hi)
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    reach = min(snap * max(math.log10(hi / lo), 1e-9), MAX_SNAP)
    for mantissas in _LADDER:
        every = [float(f"{m * 10.0 ** e:.12g}") for e in range(e0, e1 + 1) for m in mantissas]
        below = [t for t in every if t < lo * (1 - 1e-9)]
        above = [t for t in every if t > hi * (1 + 1e-9)]
        a = below[-1] if below and math.log10(lo / below[-1]) <= reach else lo
        b = above[0] if above and math.log10(above[0] / hi) <= reach else hi
        ticks = [t for t in every if a * (1 - 1e-9) <= t <= b * (1 + 1e-9)]
        if len(ticks) >= min_labels:
            if len(ticks) > max_labels and len(mantissas) == 1:  # many decades: every k-th one
                k = math.ceil(len(ticks) / max_labels)
                ticks = ticks[::-1][::k][::-1]  # keep the largest decade
            return ticks, a, b
    return _nice_linear(lo, hi, min_labels), lo, hi


def log_range(values: Sequence[float], pad: float = PAD) -> tuple[float, float]:
    """The data range of the positive ``values``, widened by ``pad`` decades each side (x 1.25 around a single
    value), in data units."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 0.1, 10.0
    lo, hi = float(v.min()), float(v.max())
    if hi / lo < 1.0001:
        return lo / 1.25, hi * 1.25
    return lo / 10 ** pad, hi * 10 ** pad


def sci(values: Sequence[float]) -> list[str]:
    """Labels in one format for the whole axis: plain decimals (``0.01, 2, 500``) when every value lies in
    [0.001, 10^4), else exponent form (``1e-6, 2e-4, 0.01`` -> ``1e-6, 2e-4, 1e-2``)."""
    vals = [float(v) for v in values]
    if all(1e-3 <= abs(v) < 1e4 for v in vals):
        return [f"{v:.6g}" for v in vals]
    out = []
    for v in vals:
        e = math.floor(math.log10(abs(v)))
        m = float(f"{v / 10 ** e:.3g}")
        if m >= 10:  # rounding reached the next decade
            m, e = m / 10, e + 1
        out.append(f"{m:g}e{e}")
    return out


def set_log_axis(fig, values: Sequence[float], fmt: Callable[[float], str] | None = None, axis: str = "x",
                 min_labels: int = 3, max_labels: int = 8, snap: float = 0.25, **kwargs) -> list[float]:
    """Make every ``axis`` of ``fig`` a log axis over ``values`` with round labelled ticks (``fmt`` per tick, or
    :func:`sci` over the whole axis); ``snap=0`` keeps ticks off the ends (side-by-side panels, where a label at
    the edge runs into the next panel's). Returns the tick values."""
    ticks, lo, hi = log_scale(*log_range(values), min_labels, max_labels, snap)
    text = [fmt(t) for t in ticks] if fmt else sci(ticks)
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    eps = 1e-3  # decades: a tick on the very edge is one plotly may drop
    update(type="log", range=[math.log10(lo) - eps, math.log10(hi) + eps], tickmode="array", tickvals=ticks, ticktext=text,
           **kwargs)
    # plotly.js turns the other axes' autorange off once matched (faceted) axes get a range: an empty panel
    # ([-1, 4]) unless we say it again
    other = fig.for_each_yaxis if axis == "x" else fig.for_each_xaxis
    other(lambda a: a.update(autorange=True) if a.range is None else None)
    return ticks
