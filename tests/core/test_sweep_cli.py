"""`python -m peru_core sweep` on a reduced setting, and a sweep killed midway then rerun."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ARGS = ["--methods", "task_arithmetic", "average", "--keeps", "1", "2", "3", "4", "5", "10", "20", "30",
        "--ranks", "1", "2", "3", "4"]


def _sweep(zoo: Path, out: Path, home: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PERU_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "peru_core", "sweep", "--zoo", str(zoo), *ARGS, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _sweep_here(zoo: Path, out: Path, capsys, *extra: str) -> str:
    """The same command in this process (cheaper than a subprocess); returns what it printed."""
    from peru_core.cli import main

    assert main(["sweep", "--zoo", str(zoo), *ARGS, *extra, "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_sweep_writes_the_table_and_reuses_the_store(tiny_zoo_dir, tmp_path, peru_home, capsys):
    out = tmp_path / "results.csv"
    stdout = _sweep_here(tiny_zoo_dir, out, capsys)
    table = pd.read_csv(out, index_col=0)
    assert {"Stripes", "Blobs", "Avg", "params", "bytes"} <= set(table.columns)
    assert "PERU-FFT (Task Arithmetic) 10%" in table.index and "PERU-LoRA q=4" in table.index
    assert table.loc["Pre-trained", "Avg"] == (table.loc["Pre-trained", "Stripes"] + table.loc["Pre-trained", "Blobs"]) / 2
    assert "0 of" in stdout  # nothing from the store on the first run
    stdout2 = _sweep_here(tiny_zoo_dir, tmp_path / "again.csv", capsys)
    n_rows = 2 * len(table)
    assert f"{n_rows} of {n_rows} rows from the results store" in stdout2
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv", index_col=0), table)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_zoo_is_one_line(tmp_path, capsys):
    from peru_core.cli import main

    assert main(["sweep", "--zoo", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "zoo.json" in err
    assert not (tmp_path / "x.csv").exists()


def test_killed_sweep_leaves_no_partial_rows(tiny_zoo_dir, tmp_path, peru_home, capsys):
    home = tmp_path / "home"
    db = home / "results.sqlite"
    p = _sweep(tiny_zoo_dir, tmp_path / "killed.csv", home)
    deadline = time.time() + 240
    rows = 0
    while time.time() < deadline and p.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    rows = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0
            if rows >= 6:
                break
        time.sleep(0.05)
    assert p.poll() is None, "the sweep ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed.csv").exists()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_spec = [n for (n,) in con.execute("SELECT COUNT(*) FROM results GROUP BY spec_key")]
    assert per_spec and set(per_spec) == {2}  # every stored spec has both tasks, none half
    resumed = _sweep(tiny_zoo_dir, tmp_path / "resumed.csv", home)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _sweep_here(tiny_zoo_dir, tmp_path / "fresh.csv", capsys, "--no-store")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "resumed.csv", index_col=0),
                                  pd.read_csv(tmp_path / "fresh.csv", index_col=0))
