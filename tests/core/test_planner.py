"""The budget planner: exact DP equals brute force, greedy and the uniform m never beat it, budgets are respected."""
import itertools
import random

import pandas as pd
import pytest

from peru_core.errors import PeruError
from peru_core.planner import (Option, curves_from_rows, pareto_plans, plan_exact, plan_greedy, plan_table,
                                plan_uniform)

GRID = (1.0, 5.0, 10.0, 20.0)


def _sparse_cost(m: float, d: int = 1000) -> int:
    """A sparse part's size grows with m (values + a mask or indices): the same for every task at one m."""
    return 200 + int(4 * d * m / 100) + min(d // 8, int(4 * d * m / 100))


def constructed_curves() -> dict[str, list[Option]]:
    """Curves with different knees over m = 1, 5, 10, 20%: "easy" is done at 1%, "hard" still climbs at 20%."""
    acc = {"easy": (0.95, 0.96, 0.96, 0.96), "medium": (0.6, 0.8, 0.85, 0.87), "hard": (0.3, 0.45, 0.6, 0.8)}
    return {t: [Option(m, f"{m:g}%", _sparse_cost(m), a) for m, a in zip(GRID, accs)] for t, accs in acc.items()}


def random_curves(seed: int, tasks: int = 3, k: int = 4) -> dict[str, list[Option]]:
    """Arbitrary (also non-monotone) curves with task-specific costs, as LoRA parts of different shapes give."""
    rng = random.Random(seed)
    return {f"t{i}": [Option(float(j), f"s{j}", rng.randint(1, 60), rng.random()) for j in range(k)]
            for i in range(tasks)}


def brute_force(curves, budget):
    best = None
    for picks in itertools.product(*curves.values()):
        cost = sum(o.cost for o in picks)
        acc = sum(o.accuracy for o in picks) / len(picks)
        if cost <= budget and (best is None or (acc, -cost) > (best[0] + 1e-12, -best[1])):
            best = (acc, cost)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_dp_matches_brute_force_on_small_grids(seed):
    curves = random_curves(seed)
    least = sum(min(o.cost for o in v) for v in curves.values())
    for budget in (least, least + 10, least + 40, 10_000):
        plan = plan_exact(curves, budget)
        acc, cost = brute_force(curves, budget)
        assert plan.accuracy == pytest.approx(acc, abs=1e-12)
        assert plan.bytes == cost  # ties broken towards fewer bytes, as in the brute force
        assert plan.bytes <= budget
        assert plan.bytes == sum(o.cost for _, o in plan.choice)
        assert plan.accuracy == pytest.approx(sum(o.accuracy for _, o in plan.choice) / len(curves))


@pytest.mark.parametrize("seed", range(30))
def test_greedy_and_uniform_never_beat_dp_and_respect_the_budget(seed):
    curves = random_curves(seed, k=3)
    for c in curves.values():  # uniform needs the same knobs per task
        assert [o.knob for o in c] == [0.0, 1.0, 2.0]
    least = sum(min(o.cost for o in v) for v in curves.values())
    for budget in (least, least + 15, least + 50, 10_000):
        exact, greedy = plan_exact(curves, budget), plan_greedy(curves, budget)
        uniform = plan_uniform(curves, budget)
        assert greedy.bytes <= budget and greedy.accuracy <= exact.accuracy + 1e-12
        if uniform is not None:
            assert uniform.bytes <= budget and uniform.accuracy <= exact.accuracy + 1e-12


def test_allocation_beats_one_m_for_all_on_constructed_curves():
    curves = constructed_curves()
    wins = 0
    for m in GRID:  # a budget exactly what one uniform m costs
        budget = 3 * _sparse_cost(m)
        exact, uniform = plan_exact(curves, budget), plan_uniform(curves, budget)
        assert uniform is not None and uniform.knobs == {t: m for t in curves}
        assert exact.accuracy >= uniform.accuracy and exact.bytes <= budget
        wins += exact.accuracy > uniform.accuracy + 1e-9
    assert wins == 2  # different knees: spending unevenly helps wherever there is a cheaper and a dearer m
    plan = plan_exact(curves, 3 * _sparse_cost(5.0))
    assert plan.knobs["easy"] < plan.knobs["hard"]  # bytes move from the saturated task to the climbing one


def test_an_infeasible_budget_is_one_sentence():
    curves = constructed_curves()
    least = 3 * _sparse_cost(1.0)
    for fn in (plan_exact, plan_greedy, plan_uniform):
        with pytest.raises(PeruError) as e:
            fn(curves, least - 1)
        msg = str(e.value)
        assert msg.count(". ") == 0 and msg.endswith(".") and "raise the budget" in msg
    assert plan_exact(curves, least).bytes == least


def test_uniform_is_none_when_no_single_m_fits_but_a_mix_does():
    curves = {"a": [Option(1, "1%", 10, 0.5), Option(5, "5%", 30, 0.9)],
              "b": [Option(1, "1%", 10, 0.5), Option(5, "5%", 30, 0.9)]}
    assert plan_uniform(curves, 39) == plan_uniform(curves, 20)  # only m=1 fits
    mixed = plan_exact(curves, 40)
    assert sorted(mixed.knobs.values()) == [1, 5] and mixed.accuracy == pytest.approx(0.7)


def test_curves_from_rows_and_table():
    rows = pd.DataFrame([
        {"method": "PERU-FFT (Task Arithmetic)", "scope": "global", "label": f"PERU-FFT {m:g}%", "keep": m,
         "rank": None, "task": t, "task_bytes": _sparse_cost(m), "accuracy": 0.5 + m / 100 + (t == "b") * 0.01}
        for m in (1.0, 10.0) for t in ("a", "b")])
    curves = curves_from_rows(rows, "keep")
    assert list(curves) == ["a", "b"] and [o.knob for o in curves["a"]] == [1.0, 10.0]
    assert curves["b"][1].accuracy == pytest.approx(0.61) and curves["b"][1].cost == _sparse_cost(10.0)
    plan = plan_exact(curves, _sparse_cost(1.0) + _sparse_cost(10.0))
    table = plan_table(plan, plan_uniform(curves, _sparse_cost(1.0) + _sparse_cost(10.0)))
    assert table["planned part (bytes)"].sum() == plan.bytes
    assert table["planned accuracy (%)"].mean() == pytest.approx(plan.accuracy * 100)
    with pytest.raises(PeruError):
        curves_from_rows(pd.concat([rows, rows.assign(method="Post-Pruning")]), "keep")


@pytest.mark.parametrize("seed", range(10))
def test_pareto_plans_hold_the_exact_plan_of_every_smaller_budget(seed):
    curves = random_curves(seed)
    most = sum(max(o.cost for o in v) for v in curves.values())
    plans = pareto_plans(curves, most)
    assert [p.bytes for p in plans] == sorted(p.bytes for p in plans)
    assert all(a.accuracy < b.accuracy for a, b in zip(plans, plans[1:]))  # each dearer plan is more accurate
    least = sum(min(o.cost for o in v) for v in curves.values())
    for budget in range(least, most + 1, 7):
        best = max((p for p in plans if p.bytes <= budget), key=lambda p: p.accuracy)
        assert best.accuracy == pytest.approx(plan_exact(curves, budget).accuracy, abs=1e-12)
