"""Table 10 (pruning theta_t itself) and Table 7 / B.3 (a subset of the tasks) on the tiny zoo and on formulas."""
import math

import numpy as np
import pytest
import torch

from peru_core import ablations as ab
from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.merging import get_method
from peru_core.reuse import SparseReuse
from peru_core.sparse import keep_count
from peru_core.spec import RunSpec
from peru_core.store import ResultsStore
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime


@pytest.fixture(scope="module")
def rt(tiny_zoo_dir):
    return ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")


@pytest.mark.parametrize("keep", [0.0, 1.0, 10.0, 37.5, 90.0, 100.0])
def test_pruning_theta_keeps_exactly_k_largest_entries(base, keep):
    theta = {k: v.clone() for k, v in base.items()}
    theta["visual.ln_post.weight"][:] = 0.5  # ties: still exactly k kept
    pruned = ab.prune_theta(theta, keep, device="cpu")
    flat = torch.cat([v.flatten() for v in theta.values()])
    kept = torch.cat([v.flatten() for v in pruned.values()])
    k = keep_count(flat.numel(), keep)
    assert int((kept != 0).sum()) == k
    assert {n: v.dtype for n, v in pruned.items()} == {n: v.dtype for n, v in theta.items()}
    assert {n: v.shape for n, v in pruned.items()} == {n: v.shape for n, v in theta.items()}
    on = kept != 0
    assert torch.equal(kept[on], flat[on])  # kept entries are theta_t's own values
    if 0 < k < flat.numel():
        assert flat[on].abs().min() >= flat[~on].abs().max()  # the largest |theta_t|, zero elsewhere


def test_pruning_theta_rows_are_measured_and_stored(rt, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    rows = ab.prune_theta_rows(rt, 50.0, store=store)
    d = ex.numel(rt.base_state()) if hasattr(ex, "numel") else sum(v.numel() for v in rt.base_state().values())
    k = keep_count(d, 50.0)
    assert list(rows["task"]) == rt.zoo.task_names and not rows["cached"].any()
    assert (rows["task_params"] == k).all() and (rows["params"] == k * len(rt.zoo.tasks)).all()
    for i, r in rows.iterrows():
        expect = rt.accuracy(ab.prune_theta(rt.finetuned(r["task"]), 50.0, device="cpu"), r["task"])
        assert r["accuracy"] == expect
    again = ab.prune_theta_rows(rt, 50.0, store=store)
    assert again["cached"].all() and list(again["accuracy"]) == list(rows["accuracy"])


def test_subset_merge_equals_merging_exactly_those_finetunes(rt):
    spec = RunSpec.make("merge", "full", "task_arithmetic", {"lam": 0.3})
    base = rt.base_state()
    for subset in (["blobs"], ["stripes"], ["blobs", "stripes"]):
        got = ab.subset_merge(rt, spec, subset)
        want = get_method("task_arithmetic")(base, [rt.finetuned(t) for t in rt.zoo.task_names if t in subset],
                                             lam=0.3, device="cpu")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    full = ex.merged_model(rt, spec)
    got = ab.subset_merge(rt, spec, ["blobs", "stripes"])
    assert all(torch.equal(got[k], full[k]) for k in full)
    one = ab.subset_merge(rt, spec, ["blobs"])
    assert any(not torch.equal(one[k], full[k]) for k in full)


def test_subset_context_maps_the_merge_tasks_to_the_zoo_tasks():
    calls = []

    class Ctx:
        def fisher(self, task, sd, samples):
            calls.append(("fisher", task))

        def grams(self, task, sd, samples):
            calls.append(("grams", task))

        def test_batches(self, task, batch_size, seed):
            calls.append(("batches", task))

        def logits_fn(self, task):
            calls.append(("logits", task))

    sub = ab.SubsetContext(Ctx(), [3, 5])
    sub.fisher(0, {}, 1), sub.grams(1, {}, 1), sub.test_batches(1, 2, 0), sub.logits_fn(0)
    assert calls == [("fisher", 3), ("grams", 5), ("batches", 5), ("logits", 3)]


def test_run_subset_on_all_tasks_equals_run_spec_and_a_subset_only_its_tasks(rt, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    specs = [RunSpec.make("merge", "full", "task_arithmetic", {"lam": 0.3}),
             RunSpec.make("peru-fft", "full", "task_arithmetic", {"lam": 0.3}, keep=10)]
    everything = ab.run_subsets(rt, specs, [rt.zoo.task_names], store)
    for sp in specs:
        want = ex.run_spec(rt, sp).set_index("task")["accuracy"]
        got = everything[everything["label"] == sp.label].set_index("task")["accuracy"]
        assert got.to_dict() == want.to_dict()
    one = ab.run_subset(rt, specs[1], ["stripes"], store)
    assert list(one["task"]) == ["stripes"] and (one["T"] == 1).all()
    star = get_method("task_arithmetic")(rt.base_state(), [rt.finetuned("stripes")], lam=0.3, device="cpu")
    model = SparseReuse(star, rt.finetuned("stripes"), device="cpu").model(10)
    assert one["accuracy"].iloc[0] == rt.accuracy(model, "stripes")
    assert ab.stored_subset(rt, specs[1], ["stripes"], store)
    assert ab.run_subset(rt, specs[1], ["stripes"], store)["cached"].all()
    with pytest.raises(PeruError):
        ab.run_subset(rt, RunSpec.make("post-pruning", keep=10), ["stripes"])
    with pytest.raises(PeruError):
        ab.run_subset(rt, specs[0], ["nope"])


def test_task_subsets_all_or_capped_and_reproducible():
    tasks = [f"t{i}" for i in range(6)]
    every = ab.task_subsets(tasks, [2, 3], cap=100)
    assert len(every) == math.comb(6, 2) + math.comb(6, 3) and len(set(every)) == len(every)
    capped = ab.task_subsets(tasks, [2, 3, 6], cap=4)
    assert [len(s) for s in capped] == [2] * 4 + [3] * 4 + [6]
    assert capped == ab.task_subsets(tasks, [2, 3, 6], cap=4)
    assert all(list(s) == sorted(s, key=tasks.index) for s in capped)
    with pytest.raises(PeruError):
        ab.task_subsets(tasks, [7], cap=3)
    assert np.all([set(s) <= set(tasks) for s in capped])


def test_table10_rows_bundle_theta_v_and_u_and_are_stored(rt, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    assert not ab.stored_table10(rt, [10.0], store)
    rows = ab.table10_rows(rt, [10.0], store)
    assert list(rows["mode"].unique()) == ["prune-theta", "post-pruning", "peru-fft"]
    assert (rows["keep"] == 10.0).all() and len(rows) == 3 * len(rt.zoo.task_names)
    for sp in ab.table10_specs(10.0):  # the v_t and u_t rows are the ordinary run specs' rows
        want = ex.run_spec(rt, sp).set_index("task")["accuracy"].to_dict()
        assert rows[rows["label"] == sp.label].set_index("task")["accuracy"].to_dict() == want
    assert ab.stored_table10(rt, [10.0], store)
    assert ab.table10_rows(rt, [10.0], store)["cached"].all()


def test_table5_specs_pair_every_merge_with_peru_fft_on_it():
    specs = ab.table5_specs(5.0, ["task_arithmetic", "ties"])
    assert [s.mode.value for s in specs] == ["pretrained", "single-task", "merge", "peru-fft", "merge", "peru-fft"]
    assert specs[3].merge == specs[2].merge == "task_arithmetic" and specs[3].params == specs[2].params
    assert specs[5].keep == 5.0 and specs[5].merge == "ties"


def test_accuracy_against_t_averages_each_subset_then_the_subsets():
    import pandas as pd

    rows = pd.DataFrame([
        {"label": "M", "method": "M", "subset": "a", "T": 1, "task": "a", "accuracy": 0.9},
        {"label": "M", "method": "M", "subset": "b", "T": 1, "task": "b", "accuracy": 0.5},
        {"label": "M", "method": "M", "subset": "a + b", "T": 2, "task": "a", "accuracy": 0.8},
        {"label": "M", "method": "M", "subset": "a + b", "T": 2, "task": "b", "accuracy": 0.4}])
    curve = ab.by_task_count(rows).set_index("T")
    assert curve.loc[1, "accuracy"] == pytest.approx(0.7) and curve.loc[1, "low"] == 0.5
    assert curve.loc[1, "high"] == 0.9 and curve.loc[1, "subsets"] == 2
    assert curve.loc[2, "accuracy"] == pytest.approx(0.6) and curve.loc[2, "subsets"] == 1


def test_the_full_subset_reuses_the_run_spec_rows(rt, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    spec = RunSpec.make("merge", "full", "task_arithmetic", {"lam": 0.3})
    ex.run_spec(rt, spec, store)
    assert ab.stored_subset(rt, spec, rt.zoo.task_names, store)
    assert ab.run_subset(rt, spec, list(reversed(rt.zoo.task_names)), store)["cached"].all()
