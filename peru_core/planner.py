"""The budget planner: a different m% (or q) per task, chosen to maximise the average accuracy within a total byte
budget for all T task parts, from each task's measured accuracy-vs-setting curve.

PERU (https://arxiv.org/abs/2310.01886) gives every task the same m% (or q). Tasks differ in how much accuracy each
extra byte buys (Figure 7: MNIST saturates at 1%, SUN397 still climbs at 10%), so a fixed total spent unevenly can
do better. This is a multiple-choice knapsack: each task picks exactly one computed setting (its cost = the exact
size of that task's part file, its value = that task's measured held-out accuracy there).

* :func:`plan_exact`: dynamic programming over the reachable total costs. The states after the first i tasks are
  the distinct sums of their part sizes (sorted); a state costing more than another without a higher accuracy sum
  can never lead to a better allocation (the remaining tasks add the same to both), so only the Pareto frontier of
  (bytes, accuracy) is kept. This is exact on the computed grid, and needs no discretisation of the bytes: with
  K settings and equal costs across tasks (sparse parts at the same m have the same size) the frontier holds at
  most C(T+K-1, K-1) sums (24,310 for 8 tasks x 10 settings), and usually far fewer.
* :func:`plan_greedy`: every task starts at its cheapest setting; then repeatedly take the upgrade (any task, to
  any dearer setting of it that is more accurate) with the largest accuracy gain per extra byte that still fits.
  Fast and usually close; never better than the exact plan.
* :func:`plan_uniform`: the best single setting for all tasks within the same budget (the paper's choice).

No new evaluation happens here: a plan's accuracy is the mean of the per-task accuracies measured at the chosen
settings, and its bytes the sum of the chosen parts' file sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pandas as pd

from peru_core.errors import PeruError


@dataclass(frozen=True)
class Option:
    """One computed setting of one task: its knob (m% or q), label, part size (bytes) and measured accuracy (0-1)."""

    knob: float
    label: str
    cost: int
    accuracy: float


@dataclass(frozen=True)
class Plan:
    """One setting per task (same order as the curves' tasks), the bytes of all T parts and the average accuracy."""

    choice: tuple[tuple[str, Option], ...]
    bytes: int
    accuracy: float  # mean over tasks of the measured accuracy at the chosen setting

    @property
    def knobs(self) -> dict[str, float]:
        return {t: o.knob for t, o in self.choice}


Curves = Mapping[str, Sequence[Option]]


def curves_from_rows(rows: pd.DataFrame, knob: str = "keep") -> dict[str, list[Option]]:
    """Per-task options from :func:`peru_core.experiments.run_spec` rows of one method family (one shared model):
    ``knob`` is ``keep`` (m%) or ``rank`` (q); costs are the rows' ``task_bytes`` (exact part-file sizes)."""
    if knob not in ("keep", "rank"):
        raise PeruError(f"Unknown planner knob {knob!r}; use keep (m%) or rank (q).")
    d = rows[rows[knob].notna()]
    if d.empty:
        raise PeruError(f"No computed settings with a {'m%' if knob == 'keep' else 'q'} to plan over; compute the "
                        "sweep first.")
    if d["method"].nunique() > 1 or d["scope"].nunique() > 1:
        raise PeruError("The planner takes one method family at a time (one shared model); pick one.")
    out: dict[str, list[Option]] = {}
    for task, g in d.groupby("task", sort=False):
        g = g.drop_duplicates(knob).sort_values(knob)
        out[str(task)] = [Option(float(r[knob]), str(r["label"]), int(r["task_bytes"]), float(r["accuracy"]))
                          for _, r in g.iterrows()]
    return out


def _check(curves: Curves, budget: float) -> None:
    if not curves or any(not opts for opts in curves.values()):
        raise PeruError("Every task needs at least one computed setting; compute the sweep first.")
    if not budget >= 0:  # also NaN
        raise PeruError(f"The budget {budget!r} is not a non-negative number of bytes; give one.")
    least = sum(min(o.cost for o in opts) for opts in curves.values())
    if least > budget:
        raise PeruError(f"A budget of {budget / 1e6:.6g} MB cannot hold one part per task: the cheapest computed "
                        f"settings already take {least / 1e6:.6g} MB, so raise the budget or compute a smaller m% "
                        "or q.")


def _plan(curves: Curves, picks: Sequence[Option]) -> Plan:
    tasks = list(curves)
    return Plan(tuple(zip(tasks, picks)), sum(o.cost for o in picks),
                sum(o.accuracy for o in picks) / len(picks))


def pareto_plans(curves: Curves, budget: float) -> list[Plan]:
    """Every allocation on the Pareto frontier of (total bytes <= ``budget``, average accuracy), cheapest first:
    the exact plan of every smaller budget is among them (the one with the most bytes that fit), so one pass draws
    the whole accuracy-vs-budget curve. DP over partial allocations, task by task (module doc)."""
    _check(curves, budget)
    # state: (cost sum, accuracy sum, chosen option index per task so far)
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for opts in curves.values():
        grown = [(c + o.cost, a + o.accuracy, picks + (j,)) for c, a, picks in frontier
                 for j, o in enumerate(opts) if c + o.cost <= budget]
        grown.sort(key=lambda s: (s[0], -s[1]))  # by cost, the most accurate first among equal costs
        frontier, best = [], float("-inf")
        for s in grown:
            if s[1] > best + 1e-12:  # strictly more accurate than every cheaper state: not dominated
                frontier.append(s)
                best = s[1]
    return [_plan(curves, [opts[j] for opts, j in zip(curves.values(), picks)]) for _, _, picks in frontier]


def plan_exact(curves: Curves, budget: float) -> Plan:
    """The allocation with the highest average accuracy whose parts fit ``budget`` bytes (ties: fewer bytes): the
    last (dearest and most accurate) plan of :func:`pareto_plans`."""
    return pareto_plans(curves, budget)[-1]


def plan_greedy(curves: Curves, budget: float) -> Plan:
    """Cheapest setting per task, then the best-fitting upgrade by accuracy gained per extra byte, until none fits."""
    _check(curves, budget)
    opts = list(curves.values())
    pick = [min(o, key=lambda x: (x.cost, -x.accuracy)) for o in opts]
    spent = sum(p.cost for p in pick)
    while True:
        best, best_rate = None, 0.0
        for i, o in enumerate(opts):
            for cand in o:
                extra, gain = cand.cost - pick[i].cost, cand.accuracy - pick[i].accuracy
                if gain <= 0 or spent + extra > budget:
                    continue
                rate = gain / extra if extra > 0 else float("inf")  # a free gain first
                if rate > best_rate:
                    best, best_rate = (i, cand), rate
        if best is None:
            return _plan(curves, pick)
        i, cand = best
        spent += cand.cost - pick[i].cost
        pick[i] = cand


def uniform_plans(curves: Curves) -> list[Plan]:
    """One plan per knob value that every task has computed (the same m or q for all), cheapest first."""
    if not curves:
        return []
    by_knob = [{o.knob: o for o in opts} for opts in curves.values()]
    common = set.intersection(*(set(k) for k in by_knob))
    return sorted((_plan(curves, [k[v] for k in by_knob]) for v in common), key=lambda p: (p.bytes, -p.accuracy))


def plan_uniform(curves: Curves, budget: float) -> Optional[Plan]:
    """The best single knob value for every task within ``budget`` (ties: fewer bytes), or None when no value that
    every task has computed fits."""
    _check(curves, budget)
    plans = [p for p in uniform_plans(curves) if p.bytes <= budget]
    return max(plans, key=lambda p: (p.accuracy, -p.bytes)) if plans else None


def plan_table(plan: Plan, uniform: Optional[Plan], knob: str = "keep") -> pd.DataFrame:
    """One row per task: the planned setting, its part size and accuracy, and the uniform plan's beside it."""
    name = "m (%)" if knob == "keep" else "q"
    u = dict(uniform.choice) if uniform is not None else {}
    rows = []
    for task, o in plan.choice:
        row = {"task": task, f"planned {name}": o.knob, "planned part (bytes)": o.cost,
               "planned accuracy (%)": o.accuracy * 100.0}
        if task in u:
            row.update({f"uniform {name}": u[task].knob, "uniform part (bytes)": u[task].cost,
                        "uniform accuracy (%)": u[task].accuracy * 100.0})
        rows.append(row)
    return pd.DataFrame(rows)
