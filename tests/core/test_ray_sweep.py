"""`sweep --ray` on a local Ray runtime (one per module, 2 CPUs): the serial table byte for byte, nothing sent for
stored specs, a bad spec reported once while the rest finish, a killed worker retried, a killed driver resumed."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from peru_core.cli import main  # noqa: E402
from peru_core.raysweep import SweepFailed, run_specs_ray  # noqa: E402
from peru_core.spec import RunSpec  # noqa: E402
from peru_core.specfile import spec_file_text  # noqa: E402
from peru_core.store import ResultsStore  # noqa: E402

ARGS = ["--methods", "task_arithmetic", "--keeps", "1", "10", "--ranks", "1", "4"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray runtime for the module; the sweeps below find it open and leave it open."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runtime(tiny_zoo_dir):
    from peru_core.zoo import load_zoo
    from peru_core.zoo.runtime import ZooRuntime

    return ZooRuntime(load_zoo(tiny_zoo_dir), device="cpu")


def _sweep(zoo: Path, out: Path, *extra: str) -> int:
    return main(["sweep", "--zoo", str(zoo), *extra, "--out", str(out)])


def _sent(messages: list[str]) -> list[str]:
    """Labels of the specs a worker computed (or failed), from the driver's progress lines."""
    found = (re.match(r"(?:\[[ \d.]+%\] )?(.+?): (?:\d+\.\d s|FAILED) on worker \d", m) for m in messages)
    return [f.group(1) for f in found if f]


def test_ray_table_is_the_serial_table_and_stored_specs_are_not_sent(tiny_zoo_dir, tmp_path, peru_home, capsys,
                                                                     runtime):
    assert _sweep(tiny_zoo_dir, tmp_path / "serial.csv", *ARGS, "--no-store") == 0
    # store a third of the specs first: those are read back, never sent
    from peru_core import experiments

    specs = experiments.paper_specs(runtime, merges=["task_arithmetic"], keeps=[1.0, 10.0], ranks=[1, 4])
    store = ResultsStore()
    experiments.run_specs(runtime, specs[::3], store)
    capsys.readouterr()
    assert _sweep(tiny_zoo_dir, tmp_path / "ray.csv", *ARGS, "--ray", "--workers", "2") == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "serial.csv").read_bytes()
    sent = _sent(err.splitlines())
    assert sorted(sent) == sorted(s.label for i, s in enumerate(specs) if i % 3)
    assert f"{len(specs[::3])} of {len(specs)} specs from the results store" in err
    assert re.search(r"\d+/10 specs \| elapsed \d+:\d\d, remaining ~\d+:\d\d \| w\d [\d.]+/min", err)
    assert store.count(runtime.content_hash) == 2 * len(specs)
    messages: list[str] = []
    rows = run_specs_ray(runtime, specs, store, on_progress=lambda f, m: messages.append(m))
    assert rows["cached"].all() and _sent(messages) == []  # everything stored: no worker was even started
    assert not any("ready on" in m for m in messages)


def test_bad_spec_is_reported_once_and_the_others_finish(tiny_zoo_dir, tmp_path, peru_home, capsys, runtime):
    good = [RunSpec.make("pretrained"), RunSpec.make("merge", "full", "task_arithmetic"),
            RunSpec.make("peru-fft", "full", "task_arithmetic", keep=10), RunSpec.make("peru-lora", "lora", rank=2)]
    bad = RunSpec.make("peru-lora", "lora", rank=99)  # valid alone, too large for this zoo's rank-4 adapters
    spec_file = tmp_path / "specs.json"
    spec_file.write_text(spec_file_text(good[:2] + [bad] + good[2:]))
    assert _sweep(tiny_zoo_dir, tmp_path / "t.csv", "--specs", str(spec_file), "--ray") == 2
    err = capsys.readouterr().err
    assert len(re.findall(r"PERU-LoRA q=99: FAILED on worker \d: Rank q=99 is out of range", err)) == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 spec(s) failed: PERU-LoRA q=99: Rank q=99 is out of range")
    assert "the 4 that finished are in the results store" in last
    assert not (tmp_path / "t.csv").exists()  # nothing half-written
    store = ResultsStore()
    assert all(store.get(runtime.content_hash, s.key(), runtime.zoo.task_names) for s in good)
    assert store.get(runtime.content_hash, bad.key(), runtime.zoo.task_names) is None
    with pytest.raises(SweepFailed) as e:  # the API says the same, with each failure
        run_specs_ray(runtime, good + [bad], store)
    assert list(e.value.failures) == ["PERU-LoRA q=99"]


def test_killed_worker_is_restarted_and_its_specs_rerun(tiny_zoo_dir, peru_home, runtime):
    specs = [RunSpec.make("peru-fft", "full", "task_arithmetic", keep=k) for k in (1, 2, 5, 10, 20)]
    messages: list[str] = []
    killed: list[int] = []

    def on_progress(fraction: float, message: str) -> None:
        messages.append(message)
        pid = re.search(r"ready on \S+ \(pid (\d+)", message)
        if pid:
            killed.append(int(pid.group(1)))
        elif _sent([message]) and len(killed) == 1:  # the first spec is back; the other four are queued
            os.kill(killed[0], signal.SIGKILL)
            killed.append(0)

    rows = run_specs_ray(runtime, specs, ResultsStore(), workers=1, max_retries=1, on_progress=on_progress)
    assert killed[1:] == [0], messages
    assert any(f"worker 0 was restarted (pid {killed[0]} died" in m for m in messages), messages
    assert not rows["cached"].any() and list(dict.fromkeys(rows["label"])) == [s.label for s in specs]
    from peru_core import experiments

    serial = experiments.run_specs(runtime, specs)
    pd.testing.assert_frame_equal(rows, serial)


def test_killed_driver_loses_no_stored_spec_and_a_rerun_computes_the_rest(tiny_zoo_dir, tmp_path, capsys,
                                                                         monkeypatch):
    home = tmp_path / "home"
    db = home / "results.sqlite"
    cmd = [sys.executable, "-m", "peru_core", "sweep", "--zoo", str(tiny_zoo_dir), *ARGS, "--ray", "--workers", "1",
           "--out", str(tmp_path / "killed.csv")]
    # its own session: the local Ray runtime it starts goes down with it, and the test can clear what remains
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PERU_HOME": str(home)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, stored = time.time() + 300, 0
        while time.time() < deadline and p.poll() is None and stored < 2:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as con:
                        stored = con.execute("SELECT COUNT(DISTINCT spec_key) FROM results").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # Ray's agents of that session, if any outlived it
        except ProcessLookupError:
            pass
        p.stderr.close()
    assert not (tmp_path / "killed.csv").exists()
    with sqlite3.connect(db) as con:
        per_spec = [n for (n,) in con.execute("SELECT COUNT(*) FROM results GROUP BY spec_key")]
    assert per_spec and set(per_spec) == {2}  # each stored spec whole
    monkeypatch.setenv("PERU_HOME", str(home))
    capsys.readouterr()
    assert _sweep(tiny_zoo_dir, tmp_path / "resumed.csv", *ARGS, "--ray") == 0
    err = capsys.readouterr().err
    total = int(re.search(r"of (\d+) specs from the results store", err).group(1))
    assert f"{len(per_spec)} of {total} specs from the results store" in err
    assert len(_sent(err.splitlines())) == total - len(per_spec)
    monkeypatch.setenv("PERU_HOME", str(tmp_path / "fresh"))
    assert _sweep(tiny_zoo_dir, tmp_path / "fresh.csv", *ARGS) == 0
    assert (tmp_path / "resumed.csv").read_bytes() == (tmp_path / "fresh.csv").read_bytes()
