"""Quick estimates (peru_core.estimate): the subset is deterministic and stratified, the Wilson interval is sound,
estimates live apart from exact rows in the store, and an estimate never lands where an exact row is expected."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.estimate import (DEFAULT_FRACTION, class_weights, estimate_of, stratified_subset,
                                wilson_interval)
from peru_core.spec import Mode, RunSpec
from peru_core.store import ResultsStore, engine_key
from peru_core.table import paper_table, results_csv
from peru_core.zoo.manifest import load_zoo
from peru_core.zoo.runtime import ZooRuntime

LABELS = np.repeat(np.arange(5), [100, 40, 7, 3, 250])


def test_subset_is_deterministic_and_stratified():
    a = stratified_subset(LABELS)
    assert np.array_equal(a, stratified_subset(LABELS))  # same labels, fraction and seed: the same images
    assert not np.array_equal(a, stratified_subset(LABELS, seed=1))
    assert np.all(np.diff(a) > 0) and a.dtype == np.int64
    picked = np.bincount(LABELS[a], minlength=5)
    # round(15% of each class), at least 5 (or the whole class when smaller)
    assert picked.tolist() == [15, 6, 5, 3, 38]
    # a class's pick does not depend on the other classes
    alone = stratified_subset(LABELS[LABELS == 4])
    assert np.array_equal(np.flatnonzero(LABELS == 4)[alone], a[LABELS[a] == 4])


def test_class_weights_undo_the_oversampling():
    index = stratified_subset(LABELS)
    w = class_weights(LABELS, index)
    assert w.sum() == pytest.approx(1.0)
    # a predictor right exactly on class 4 (250 of 400 images) is estimated at exactly its full-set accuracy
    ok = (LABELS[index] == 4).astype(float)
    assert estimate_of(ok, LABELS, index, DEFAULT_FRACTION, 0).accuracy == pytest.approx(250 / 400)


def test_wilson_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2  # not empty at 0
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 0.9
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # the textbook values for 50 of 100
    with pytest.raises(PeruError):
        wilson_interval(1, 0)
    with pytest.raises(PeruError):
        stratified_subset(LABELS, fraction=0.0)


def test_store_keeps_estimates_apart(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    est = [{"task": "a", "accuracy": 0.5, "low": 0.4, "high": 0.6, "n": 30, "total": 200}]
    store.put_estimates("z", "spec", est)
    assert store.get("z", "spec", ["a"]) is None  # get returns exact rows only
    assert store.frame("z").empty and store.count("z") == 0
    assert store.estimates("z", "spec", ["a"])[0]["estimate"] is True
    store.put("z", "spec", [{"task": "a", "accuracy": 0.55}])
    assert store.estimates("z", "spec", ["a"]) is None  # the exact rows replaced them
    store.put_estimates("z", "spec", est)  # an estimate arriving late never shadows exact rows
    assert store.estimates("z", "spec", ["a"]) is None
    assert store.get("z", "spec", ["a"]) == [{"task": "a", "accuracy": 0.55}]


def test_precision_is_part_of_the_key(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    key = RunSpec.make(Mode.PRETRAINED).key()
    assert "+" not in engine_key(key) and engine_key(key, "bf16") == engine_key(key) + "+bf16"
    store.put("z", key, [{"task": "a", "accuracy": 0.5}], precision="bf16")
    assert store.get("z", key, ["a"]) is None  # a bf16 row is never served as float32
    store.put("z", key, [{"task": "a", "accuracy": 0.6}])
    assert store.get("z", key, ["a"], precision="bf16")[0]["accuracy"] == 0.5  # neither drops the other
    assert store.get("z", key, ["a"])[0]["accuracy"] == 0.6
    assert list(store.frame("z")["accuracy"]) == [0.6]  # tables read float32 rows only


def test_tables_refuse_estimates():
    rows = pd.DataFrame([{"label": "x", "task": "a", "accuracy": 0.5, "params": 1, "bytes": 2, "estimate": True}])
    with pytest.raises(PeruError):
        paper_table(rows)
    with pytest.raises(PeruError):
        results_csv(rows)


def test_run_specs_estimates_first_then_exact_rows_only(tiny_zoo_dir, peru_home):
    rt = ZooRuntime(load_zoo(tiny_zoo_dir))
    store = ResultsStore()
    specs = [RunSpec.make(Mode.POST_PRUNING, keep=5.0), RunSpec.make(Mode.PRETRAINED)]
    seen = []

    def on_estimate(spec, rows):
        # while the estimates are reported, the exact rows are not stored and nothing reads the estimate as one
        assert rows["estimate"].all() and (rows["low"] <= rows["accuracy"]).all()
        assert store.get(rt.content_hash, spec.key(), rt.zoo.task_names) is None
        assert ex.stored_rows(rt, spec, store)["estimate"].all()
        seen.append(spec.key())

    frame = ex.run_specs(rt, specs, store, on_estimate=on_estimate)
    assert seen == [s.key() for s in specs]
    assert "estimate" not in frame.columns
    for spec in specs:
        exact = store.get(rt.content_hash, spec.key(), rt.zoo.task_names)
        fresh = [rt.accuracy(ex.task_model(rt, spec, t), t) for t in rt.zoo.task_names]
        assert [r["accuracy"] for r in exact] == fresh  # the exact numbers are the full test sets'
        assert store.estimates(rt.content_hash, spec.key(), rt.zoo.task_names) is None
        assert not ex.stored_rows(rt, spec, store)["estimate"].any()
    with pytest.raises(PeruError):
        ex.store_rows(store, rt.content_hash, specs[0], ex.estimate_spec(rt, specs[0]))
