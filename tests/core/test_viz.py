"""Figure builders and the style table: exact properties on tiny hand-made result frames."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peru_core import viz, viz_style

TASKS = ["mnist", "fashion", "digits"]


def _rows(spec_key, label, method, mode, accs, params, task_bytes, keep=None, rank=None, scope="global"):
    return [dict(spec_key=spec_key, label=label, method=method, mode=mode, source="full", merge=None, keep=keep,
                 rank=rank, scope=scope, task=t, accuracy=a, params=params, bytes=4 * params,
                 task_params=task_bytes // 4, task_bytes=task_bytes) for t, a in zip(TASKS, accs)]


@pytest.fixture
def frame() -> pd.DataFrame:
    rows = (_rows("pre", "Pre-trained", "Pre-trained", "pretrained", [0.5, 0.4, 0.6], 1_000, 0)
            + _rows("st", "Single-Task", "Single-Task", "single-task", [0.99, 0.95, 0.98], 4_000, 4_000)
            + _rows("ta", "Task Arithmetic", "Task Arithmetic", "merge", [0.8, 0.6, 0.7], 1_000, 0)
            + _rows("f5", "PERU-FFT (Task Arithmetic) 5%", "PERU-FFT (Task Arithmetic)", "peru-fft",
                    [0.9, 0.8, 0.85], 1_150, 200, keep=5.0)
            + _rows("f10", "PERU-FFT (Task Arithmetic) 10%", "PERU-FFT (Task Arithmetic)", "peru-fft",
                    [0.95, 0.9, 0.9], 1_300, 400, keep=10.0)
            + _rows("p10", "Post-Pruning 10%", "Post-Pruning", "post-pruning", [0.9, 0.7, 0.8], 1_300, 400,
                    keep=10.0))
    return pd.DataFrame(rows)


def test_summary_and_table_average_the_tasks(frame):
    s = viz.summary(frame).set_index("spec_key")
    assert s.loc["f10", "accuracy"] == pytest.approx(np.mean([0.95, 0.9, 0.9]))
    assert list(s.index) == ["pre", "st", "ta", "f5", "f10", "p10"]  # first-seen order
    t = viz.accuracy_table(frame)
    assert list(t.columns[:4]) == TASKS + ["Avg"]
    assert t.loc["Task Arithmetic", "Avg"] == pytest.approx(70.0)
    assert t.loc["Task Arithmetic", "mnist"] == pytest.approx(80.0)
    assert t.loc["Single-Task", "#params"] == "4k"


def test_pareto_mask_exact():
    x = [1, 2, 2, 3, 4]
    y = [0.5, 0.7, 0.6, 0.7, 0.9]
    # (2, 0.6) is beaten by (2, 0.7); (3, 0.7) by (2, 0.7)
    assert viz.pareto_mask(x, y).tolist() == [True, True, False, False, True]


def test_tradeoff_marks_frontier_references_and_log_axis(frame):
    fig = viz.tradeoff(frame, x="params", highlight="f5")
    front = [t for t in fig.data if t.name == "Pareto frontier"][0]
    s = viz.summary(frame)
    mask = viz.pareto_mask(s["params"], s["accuracy"])
    assert sorted(front.x) == sorted(s.loc[mask, "params"])
    assert any(t.name == "current setting" for t in fig.data)
    hlines = [sh for sh in fig.layout.shapes if sh.y0 == sh.y1]
    assert sorted(round(h.y0, 6) for h in hlines) == sorted(
        round(v * 100, 6) for v in s.loc[s["mode"].isin(viz.REFERENCE_MODES), "accuracy"])
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.ticktext) == ["1k", "2k", "5k"]  # 1k..4k: 1-2-5, the end moved out to 5k
    wide = frame.assign(params=frame["params"].where(frame["mode"] != "single-task", 10 ** 6))
    assert list(viz.tradeoff(wide).layout.xaxis.ticktext) == ["1k", "10k", "100k", "1M"]  # one per decade
    # one colour per family: both PERU-FFT settings share a trace colour
    fft = [t for t in fig.data if t.name == "PERU-FFT (Task Arithmetic)"]
    assert fft and fft[0].line.color == viz_style.style("PERU-FFT (Task Arithmetic)").color
    assert len(fft[0].x) == 2


def test_budget_question(frame):
    best = viz.best_under_budget(frame, 0.0003)  # 300 bytes: f5 fits, f10 does not
    assert best["spec_key"] == "f5"
    assert viz.best_under_budget(frame, 0.004)["spec_key"] == "st"  # 4 kB: everything fits, Single-Task wins
    assert viz.best_under_budget(frame, 0.0)["spec_key"] == "ta"  # only zero-cost settings
    assert viz.best_under_budget(frame[frame["spec_key"] == "st"], 0.0) is None
    assert "PERU-FFT (Task Arithmetic) 5%" in viz.budget_sentence(frame, 0.0003)
    assert viz.budget_sentence(frame[frame["spec_key"] == "st"], 0.0).startswith("No computed setting")


def test_energy_curves_match_truncation_error():
    rng = np.random.default_rng(0)
    mats = {"a": rng.normal(size=(12, 5)) @ rng.normal(size=(5, 9)),
            "b": rng.normal(size=(7, 4)) @ rng.normal(size=(4, 6))}
    rows = []
    for name, m in mats.items():
        s = np.linalg.svd(m, compute_uv=False)
        rows += [{"layer": name, "index": i + 1, "sigma": v} for i, v in enumerate(s)]
    spectra = pd.DataFrame(rows)
    curves = viz.energy_curves(spectra, by="layer")
    for name, m in mats.items():
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        for q in (0, 1, 3):
            mq = (u[:, :q] * s[:q]) @ vt[:q]
            err = np.linalg.norm(m - mq) / np.linalg.norm(m)
            row = curves[(curves["layer"] == name) & (curves["q"] == q)].iloc[0]
            assert row["relative error"] == pytest.approx(err, abs=1e-9)
            assert row["energy"] == pytest.approx(1 - err ** 2, abs=1e-9)
    pooled = viz.energy_curves(spectra, by=None)
    q2 = pooled[pooled["q"] == 2].iloc[0]

    def rank2(m):
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        return (u[:, :2] * s[:2]) @ vt[:2]

    num = sum(np.linalg.norm(m - rank2(m)) ** 2 for m in mats.values())
    assert q2["relative error"] == pytest.approx(np.sqrt(num / sum(np.linalg.norm(m) ** 2 for m in mats.values())))
    fig = viz.energy_figure(curves, q=3)
    assert [sh.x0 for sh in fig.layout.shapes] == [3, 3]


def test_magnitude_histogram_counts_and_threshold():
    v = np.array([0.0, 1e-3, -2e-3, 5e-2, 0.1, -0.3], dtype=np.float32)
    fig = viz.magnitude_histogram(v, threshold=0.05, bins=10)
    dropped, kept = fig.data
    assert int(np.sum(dropped.y)) == 2 and int(np.sum(kept.y)) == 3  # the zero is left out of a log axis
    assert fig.layout.shapes[0].x0 == pytest.approx(np.log10(0.05))


def test_styles_are_stable_and_family_aware():
    ta, fft, lora = (viz_style.style(f) for f in ("Task Arithmetic", "PERU-FFT (Task Arithmetic)",
                                                  "Task Arithmetic [LoRA]"))
    assert fft.symbol == ta.symbol and fft.color != ta.color  # PERU-FFT keeps the inner merge's marker
    assert lora.color == ta.color and lora.symbol == ta.symbol + "-open"
    known = ["Pre-trained", "Single-Task", "Task Arithmetic", "TIES-Merging", "Fisher Merging", "RegMean",
             "Post-Pruning", "PERU-FFT (Task Arithmetic)", "PERU-FFT (TIES-Merging)", "PERU-LoRA"]
    assert len({viz_style.style(f).color for f in known}) == len(known)
    assert viz_style.ordered(reversed(known))[:2] == ["Pre-trained", "Single-Task"]
    assert viz_style.style("Some New Merge") == viz_style.style("Some New Merge")


def test_task_bars_and_tsne_panels(frame):
    fig = viz.task_bars(frame)
    assert {t.name for t in fig.data} == set(frame["label"])
    assert list(fig.data[0].x) == TASKS + ["Avg"]
    pts = pd.DataFrame({"x": [0, 1, 2], "y": [0, 1, 0], "class": ["b", "a", "b"]})
    f = viz.tsne_scatter(pts, "panel", classes=["a", "b"])
    assert [t.name for t in f.data] == ["a", "b"]  # class colours fixed by the given order


def test_knob_curve_draws_one_point_per_setting(frame):
    fig = viz.knob_curve(frame, "keep")
    fft = [t for t in fig.data if t.name == "PERU-FFT (Task Arithmetic)"][0]
    assert list(fft.x) == [5.0, 10.0]
    assert list(fft.y) == pytest.approx([np.mean([90, 80, 85]), np.mean([95, 90, 90])])
    assert len(fig.layout.shapes) == 2  # Pre-trained and Single-Task


def test_figure_modules_never_import_streamlit():
    code = "import sys, peru_core.viz, peru_core.viz_style, peru_core.embed; sys.exit('streamlit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


def test_every_registered_merge_has_its_own_colour_and_marker():
    """The rest of the field does not borrow Task Arithmetic's or TIES' look ("DARE + TIES" is not TIES)."""
    from peru_core.merging import list_methods
    from peru_core.viz_style import style

    looks = {(style(m.label).color, style(m.label).symbol) for m in list_methods()}
    assert len(looks) == len(list_methods())
    assert style("Task Arithmetic [L-LoRA]").symbol != style("Task Arithmetic [LoRA]").symbol
