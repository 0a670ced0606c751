"""Quick estimates of a setting's accuracy: a fixed, seeded, class-stratified subset of each test set, and the 95%
Wilson interval of the accuracy measured on it.

A new setting (a moved m% slider) is first evaluated on the subset and shown at once, marked as an estimate with its
interval; the full test set follows in the same job and replaces it. Estimates are stored apart from exact rows
(:mod:`peru_core.store`), so no table of the paper (https://arxiv.org/abs/2310.01886, Table 1) ever holds one.

The subset is the same for every setting (fixed seed), so two estimates are compared on the same images; each
class keeps ``round(fraction * n_class)`` images (at least ``min_per_class``, or all of a smaller class), and the
point estimate weights each class by its share of the full set, so the oversampled small classes do not bias it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from peru_core.errors import PeruError

DEFAULT_FRACTION = 0.15
DEFAULT_SEED = 0
MIN_PER_CLASS = 5
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise PeruError(f"Estimate fraction {fraction:g} is out of range; give a fraction in (0, 1], e.g. 0.15.")
    return fraction


def stratified_subset(labels: Sequence[int] | np.ndarray, fraction: float = DEFAULT_FRACTION,
                      seed: int = DEFAULT_SEED, min_per_class: int = MIN_PER_CLASS) -> np.ndarray:
    """Sorted int64 indices of a class-stratified random subset of ``labels``: per class ``round(fraction * n_c)``
    images, at least ``min(min_per_class, n_c)``. Deterministic in (labels, fraction, seed, min_per_class): each
    class draws from its own generator seeded by (seed, class), so a class's pick does not depend on the others."""
    fraction = _check_fraction(fraction)
    y = np.asarray(labels).astype(np.int64, copy=False)
    if y.ndim != 1 or len(y) == 0:
        raise PeruError("The test set has no labels; give at least one labelled image.")
    if min_per_class < 0:
        raise PeruError(f"min_per_class must be 0 or more, not {min_per_class}.")
    picks = []
    if y.min() < 0:
        raise PeruError(f"Label {int(y.min())} is negative; labels must be class indices 0, 1, ...")
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = min(len(members), max(int(math.floor(fraction * len(members) + 0.5)), min_per_class))
        rng = np.random.default_rng([int(seed), int(c)])
        picks.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


def class_weights(labels: Sequence[int] | np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per picked image, its class's share of the full set divided by the class's count in the subset: the weights
    (summing to 1) that make a subset mean an unbiased estimate of the full set's mean."""
    y = np.asarray(labels).astype(np.int64, copy=False)
    picked = y[index]
    full = np.bincount(y)
    sub = np.bincount(picked, minlength=len(full))
    return (full[picked] / len(y)) / sub[picked]


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (``correct`` may be fractional: a weighted count),
    as (low, high) in [0, 1]. Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n."""
    if n <= 0:
        raise PeruError("An interval needs at least one evaluated image; n must be positive.")
    if not 0.0 <= correct <= n:
        raise PeruError(f"correct={correct:g} must lie between 0 and n={n}.")
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """A task's accuracy measured on ``n`` images of its test set's stratified subset (of ``total``)."""

    accuracy: float  # class-weighted accuracy on the subset, in [0, 1]
    low: float  # 95% Wilson interval
    high: float
    n: int
    total: int
    fraction: float
    seed: int


def estimate_of(correct_mask: np.ndarray, labels: np.ndarray, index: np.ndarray, fraction: float,
                seed: int) -> Estimate:
    """The :class:`Estimate` from per-image correctness on the subset ``index`` of ``labels``."""
    ok = np.asarray(correct_mask, dtype=np.float64)
    if len(ok) != len(index):
        raise PeruError(f"Got {len(ok)} predictions for a subset of {len(index)} images; evaluate the whole subset.")
    acc = float(np.dot(class_weights(labels, index), ok))
    acc = min(max(acc, 0.0), 1.0)  # float rounding of the weights
    low, high = wilson_interval(acc * len(index), len(index))
    return Estimate(acc, low, high, len(index), len(labels), fraction, seed)
