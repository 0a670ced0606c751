"""Engine start and evaluation settings: threads from the free cores ($PERU_THREADS), the batch size
($PERU_BATCH), bf16 only on a CUDA GPU, the runtime's bounded test-set cache, and in-place loading giving exactly
a freshly built model's accuracies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peru_core import device as dev
from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.evaluate import predict
from peru_core.spec import Mode, RunSpec
from peru_core.zoo.manifest import load_zoo
from peru_core.zoo.runtime import ZooRuntime


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(dev, "_THREADS_SET", [])
    yield
    torch.set_num_threads(before)


def test_free_cores_leaves_out_busy_cores(monkeypatch):
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert dev.free_cores(busy=0.0) == 4
    assert dev.free_cores(busy=1.4) == 3  # another process on one core: leave it out
    assert dev.free_cores(busy=2.6) == 1
    assert dev.free_cores(busy=9.0) == 1  # never fewer than one
    assert 1 <= dev.free_cores() <= 4  # measured from /proc/stat (or the load average)


def test_busy_cores_reads_the_cpu_counters(monkeypatch):
    samples = iter([(100.0, 400.0), (150.0, 600.0)])  # 50 of 200 jiffies busy
    monkeypatch.setattr(dev, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(dev.time, "process_time", lambda: 0.0)  # this process itself computed nothing meanwhile
    assert dev.busy_cores(sample_s=0.01) == pytest.approx(2.0)


def test_configure_threads_once_and_peru_threads(monkeypatch):
    monkeypatch.setattr(dev, "free_cores", lambda busy=None: 1)
    monkeypatch.delenv("PERU_THREADS", raising=False)
    assert dev.configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("PERU_THREADS", "2")
    assert dev.configure_threads() == 1  # set once per process
    assert dev.configure_threads(force=True) == 2 and torch.get_num_threads() == 2  # the override wins
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("PERU_THREADS", bad)
        with pytest.raises(PeruError, match="PERU_THREADS"):
            dev.configure_threads(force=True)


def test_cli_configures_threads_at_start(monkeypatch, tmp_path):
    from peru_core import cli

    monkeypatch.setenv("PERU_THREADS", "1")
    assert cli.main(["sweep", "--zoo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.csv")]) == 2
    assert dev._THREADS_SET == [1] and torch.get_num_threads() == 1


def test_batch_size_for_and_peru_batch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("PERU_BATCH", raising=False)
    assert dev.batch_size_for(cpu, 10**6) == dev.CPU_BATCH
    monkeypatch.setenv("PERU_BATCH", "64")
    assert dev.batch_size_for(cpu, 10**6) == 64
    for bad in ("0", "many"):
        monkeypatch.setenv("PERU_BATCH", bad)
        with pytest.raises(PeruError, match="PERU_BATCH"):
            dev.batch_size_for(cpu, 1)


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16", "amx_tile"}, True), (set(), False)])
def test_check_precision(monkeypatch, flags, native):
    monkeypatch.setattr(dev, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert dev.check_precision("float32", cpu) == "float32"
    assert dev.supports_bf16(cpu) is native
    if native:
        assert dev.check_precision("bf16", cpu) == "bf16"
    else:
        with pytest.raises(PeruError, match="native bfloat16"):
            dev.check_precision("bf16", cpu)
    with pytest.raises(PeruError, match="Unknown precision"):
        dev.check_precision("fp8", cpu)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        assert dev.check_precision("bf16", torch.device("cuda")) == "bf16"


def test_cpu_flags_are_read_from_cpuinfo():
    flags = dev.cpu_flags()
    assert isinstance(flags, set)
    if Path("/proc/cpuinfo").exists():
        assert "fpu" in flags or not flags  # x86 lists fpu; other CPUs may name none we know


def test_runtime_refuses_bf16_without_native_support(tiny_zoo_dir, tmp_path, capsys, monkeypatch):
    from peru_core.cli import main

    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(PeruError, match="native bfloat16"):
        ZooRuntime(load_zoo(tiny_zoo_dir), "cpu", precision="bf16")
    code = main(["sweep", "--zoo", str(tiny_zoo_dir), "--device", "cpu", "--precision", "bf16", "--out",
                 str(tmp_path / "o.csv")])
    assert code == 2 and "native bfloat16" in capsys.readouterr().err


@pytest.mark.skipif(not dev.supports_bf16(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_bf16_sweep_on_the_cpu_is_stored_apart_and_close_to_float32(tiny_zoo_dir, tmp_path, monkeypatch, capsys):
    """On a CPU with native bfloat16: the same sweep in bf16 is computed (not served from the float32 rows), every
    accuracy is within one test image of float32 (the tiny zoo has 12 per task; the demo zoo's differences:
    docs/engine.md), and the float32 rows are still there afterwards."""
    import pandas as pd

    from peru_core.cli import main

    monkeypatch.setenv("PERU_HOME", str(tmp_path / "home"))
    args = ["sweep", "--zoo", str(tiny_zoo_dir), "--device", "cpu", "--methods", "task_arithmetic", "--keeps",
            "10", "--ranks", "1"]
    assert main(args + ["--out", str(tmp_path / "f32.csv")]) == 0
    capsys.readouterr()
    assert main(args + ["--precision", "bf16", "--out", str(tmp_path / "bf16.csv")]) == 0
    assert "(bf16); 0 of 22 rows from the results store" in capsys.readouterr().out
    f32, b16 = pd.read_csv(tmp_path / "f32.csv", index_col=0), pd.read_csv(tmp_path / "bf16.csv", index_col=0)
    assert list(f32.index) == list(b16.index) and len(f32) > 0
    one_image = 100 / 12 + 0.01
    assert (f32["Avg"] - b16["Avg"]).abs().max() <= one_image
    assert main(args + ["--out", str(tmp_path / "again.csv")]) == 0
    assert "22 of 22 rows from the results store" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv", index_col=0), f32)


def test_runtime_batch_size_and_bounded_data(tiny_zoo_dir, monkeypatch):
    monkeypatch.setenv("PERU_BATCH", "3")
    monkeypatch.setenv("PERU_DATA_GB", "0")  # a budget of nothing: only the newest test set stays
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")
    assert rt.batch_size == 3
    a, b = rt.zoo.task_names[:2]
    xa, _ = rt.data(a)
    assert rt.data(a)[0] is xa  # preprocessed once, kept
    rt.data(b)
    assert list(rt._data) == [(b, "test")]  # the least recently used one went
    assert rt.data(a)[0] is not xa and torch.equal(rt.data(a)[0], xa)  # and comes back the same


def test_in_place_loading_gives_a_fresh_models_accuracies(tiny_zoo_dir):
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")
    specs = [RunSpec.make(Mode.SINGLE_TASK), RunSpec.make(Mode.POST_PRUNING, keep=5.0), RunSpec.make(Mode.PRETRAINED)]
    shared = [[rt.accuracy(ex.task_model(rt, s, t), t) for t in rt.zoo.task_names] for s in specs]
    for s, accs in zip(specs, shared):
        for t, acc in zip(rt.zoo.task_names, accs):
            fresh = ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")  # a new model, loaded once with this state dict
            x, y = fresh.data(t)
            fresh.load(ex.task_model(fresh, s, t))
            pred = predict(fresh.model, fresh.head(t), x, batch_size=fresh.batch_size)
            assert float((pred == y).double().mean()) == acc
    assert np.ptp(np.array(shared)) > 0  # the settings differ, so reloading really changed the weights
