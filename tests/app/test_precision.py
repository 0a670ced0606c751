"""The sidebar's Precision: offered where the device computes bfloat16 natively (here: a CPU said to have
AVX512-BF16), absent where nothing could; a bf16 computation is stored apart from float32 and never shown as it."""
from __future__ import annotations

import sqlite3

from app_helpers import ok, open_page, press

from peru_core import device as dev
from peru_core.store import ResultsStore
from ui import sidebar, state


def _precision_boxes(at):
    return [s for s in at.sidebar.selectbox if s.label == "Precision"]


def test_no_precision_choice_without_native_bf16(app, monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(sidebar, "available_devices", lambda: ["cpu"])
    at = open_page(app, "pages/1_Merge_lab.py")
    assert _precision_boxes(at) == []


def test_bf16_on_a_bf16_cpu_is_computed_and_stored_apart(app, monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(sidebar, "available_devices", lambda: ["cpu"])
    at = open_page(app, "pages/1_Merge_lab.py")
    (box,) = _precision_boxes(at)
    assert box.value == "float32" and box.options == ["float32 (exact)", "bfloat16 (faster, approximate)"]
    at = press(at, state.LAB_COMPUTE)
    f32 = at.table[0].value
    ok(at.sidebar.selectbox(key=sidebar.PRECISION).set_value("bf16").run())
    assert at.button(key=state.LAB_COMPUTE).disabled is False  # nothing of bf16 is served from the float32 rows
    at = press(at, state.LAB_COMPUTE)
    b16 = at.table[0].value
    assert any("evaluated in bfloat16" in i.value for i in at.info)
    assert [b for b in at.get("download_button") if b.proto.label == "Results (CSV)"]
    assert list(b16.index) == list(f32.index)
    con = sqlite3.connect(ResultsStore().path)
    engines = {r[0] for r in con.execute("SELECT DISTINCT engine FROM results")}
    con.close()
    assert any(e.endswith("+bf16") for e in engines) and any("+" not in e for e in engines)
    ok(at.sidebar.selectbox(key=sidebar.PRECISION).set_value("float32").run())
    assert at.button(key=state.LAB_COMPUTE).disabled is True  # back to float32: its stored rows, unchanged
    assert at.table[0].value.equals(f32)
    assert not any("bfloat16" in i.value for i in at.info)


def test_results_file_says_its_precision():
    import pandas as pd

    from peru_core.spec import Mode, RunSpec
    from ui.downloads import results_file

    spec = RunSpec.make(Mode.PERU_FFT, merge="task_arithmetic", keep=10.0)
    rows = pd.DataFrame({"label": [spec.label], "task": ["a"], "accuracy": [0.5]})
    data, name = results_file(spec, rows)
    assert name == "peru_fft_task_arithmetic_10.csv" and "precision" not in data.decode()
    data, name = results_file(spec, rows, "bf16")
    assert name == "peru_fft_task_arithmetic_10_bf16.csv"
    assert data.decode().splitlines()[0].endswith(",precision") and data.decode().splitlines()[1].endswith(",bf16")
