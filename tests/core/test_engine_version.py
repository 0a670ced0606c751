"""Issue 14 item 22: results are keyed by an engine version; bumping one method's version recomputes only its rows."""
from __future__ import annotations

import dataclasses
import sqlite3

from peru_core import engine
from peru_core import experiments as ex
from peru_core.merging import get_method
from peru_core.merging.registry import _REGISTRY
from peru_core.spec import Mode, RunSpec
from peru_core.store import ResultsStore
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime

SPECS = [RunSpec.make("merge", "full", "task_arithmetic", {"lam": 0.3}), RunSpec.make("merge", "full", "average"),
         RunSpec.make("peru-fft", "full", "task_arithmetic", {"lam": 0.3}, keep=10),
         RunSpec.make("post-pruning", keep=10)]


def _cached(rt, store) -> dict[str, bool]:
    rows = ex.run_specs(rt, SPECS, store)
    return {label: bool(g["cached"].all()) for label, g in rows.groupby("label", sort=False)}


def test_bumping_one_version_recomputes_only_its_rows(tiny_zoo_dir, tmp_path, monkeypatch):
    rt = ZooRuntime(load_zoo(tiny_zoo_dir))
    store = ResultsStore(tmp_path / "r.sqlite")
    assert not any(_cached(rt, store).values())
    assert all(_cached(rt, store).values())
    ta = get_method("task_arithmetic")
    monkeypatch.setitem(_REGISTRY, "task_arithmetic", dataclasses.replace(ta, version=str(int(ta.version) + 1)))
    again = _cached(rt, store)  # Task Arithmetic and PERU-FFT on it are recomputed, nothing else
    assert again == {SPECS[0].label: False, SPECS[1].label: True, SPECS[2].label: False, SPECS[3].label: True}
    assert all(_cached(rt, store).values())
    monkeypatch.setitem(engine.MODE_VERSIONS, Mode.POST_PRUNING, "2")
    assert [k for k, v in _cached(rt, store).items() if not v] == [SPECS[3].label]
    # only rows of the current engine are listed, one version per spec is kept
    frame = store.frame(ex.zoo_key(rt))
    assert len(frame) == len(SPECS) * len(rt.zoo.tasks) and store.count() == len(frame)


def test_rows_from_before_engine_versions_are_recomputed(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE results (zoo_hash TEXT NOT NULL, spec_key TEXT NOT NULL, task TEXT NOT NULL, "
                      "accuracy REAL NOT NULL, extra TEXT NOT NULL, created REAL NOT NULL, "
                      "PRIMARY KEY (zoo_hash, spec_key, task));")
    key = SPECS[1].key()
    con.execute("INSERT INTO results VALUES ('z', ?, 'a', 0.5, '{}', 0)", (key,))
    con.commit()
    con.close()
    store = ResultsStore(path)
    assert store.get("z", key, ["a"]) is None  # which code produced it is unknown
    store.put("z", key, [{"task": "a", "accuracy": 0.7}])
    assert store.get("z", key, ["a"])[0]["accuracy"] == 0.7
    assert store.get("z", key, ["a"], engine="core0/merge0/average0") is None


def test_engine_version_names_the_code_it_depends_on():
    v = engine.engine_version(SPECS[2])
    assert v == f"core{engine.CORE_VERSION}/peru-fft{engine.MODE_VERSIONS[Mode.PERU_FFT]}/task_arithmetic" \
                f"{get_method('task_arithmetic').version}"
    assert engine.engine_version_of_key(SPECS[2].key()) == v
    assert set(engine.MODE_VERSIONS) == set(Mode)
