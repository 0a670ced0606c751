"""The results store: hit, miss, restart, concurrent writers, killed mid-write."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from peru_core.store import ResultsStore

ROWS = [{"task": "a", "accuracy": 0.5, "params": 10}, {"task": "b", "accuracy": 0.75, "params": 10}]


def test_miss_then_hit(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    assert store.get("z1", "spec", ["a", "b"]) is None
    store.put("z1", "spec", ROWS)
    got = store.get("z1", "spec", ["a", "b"])
    assert got == [{"task": "a", "accuracy": 0.5, "params": 10}, {"task": "b", "accuracy": 0.75, "params": 10}]
    # a partial task list is a hit too; a missing task is a miss
    assert store.get("z1", "spec", ["b"]) == [got[1]]
    assert store.get("z1", "spec", ["a", "c"]) is None


def test_other_zoo_hash_never_sees_results(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put("z1", "spec", ROWS)
    assert store.get("z2", "spec", ["a", "b"]) is None
    assert store.count("z1") == 2 and store.count("z2") == 0


def test_survives_restart(tmp_path):
    ResultsStore(tmp_path / "r.sqlite").put("z1", "spec", ROWS)
    again = ResultsStore(tmp_path / "r.sqlite")
    assert again.get("z1", "spec", ["a", "b"])[1]["accuracy"] == 0.75
    frame = again.frame("z1")
    assert sorted(frame["task"]) == ["a", "b"] and list(frame["params"]) == [10, 10]


def test_peru_home_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PERU_HOME", str(tmp_path / "home"))
    store = ResultsStore()
    assert store.path == tmp_path / "home" / "results.sqlite" and store.path.exists()


WRITER = textwrap.dedent("""
    import sys
    from peru_core.store import ResultsStore
    store = ResultsStore(sys.argv[1])
    tasks = [f"t{i}" for i in range(2000)]
    i = 0
    print("ready", flush=True)
    while True:
        store.put("z", f"spec{i}", [{"task": t, "accuracy": 0.5, "pad": "x" * 200} for t in tasks])
        i += 1
""")


def test_killed_mid_write_leaves_whole_specs_only(tmp_path):
    """SIGKILL a writer while it commits large batches: every stored spec has all its rows, the file is intact."""
    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = [n for (n,) in con.execute("SELECT COUNT(*) FROM results GROUP BY spec_key")]
    con.close()
    assert counts, "the writer stored nothing before it was killed; the test proves nothing"
    assert set(counts) == {2000}
    # and the store is usable afterwards
    ResultsStore(db).put("z", "after", ROWS)
    assert ResultsStore(db).get("z", "after", ["a", "b"]) is not None


def test_concurrent_writers(tmp_path):
    db = tmp_path / "r.sqlite"
    ResultsStore(db)
    code = textwrap.dedent("""
        import sys
        from peru_core.store import ResultsStore
        s = ResultsStore(sys.argv[1])
        for i in range(30):
            s.put("z", f"{sys.argv[2]}-{i}", [{"task": t, "accuracy": 0.1} for t in "abcd"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), str(n)]) for n in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert ResultsStore(db).count("z") == 3 * 30 * 4
