"""Merge lab: a new setting shows its quick estimates (marked, with their interval and a caption) while the same job
evaluates the full test sets, then the exact numbers replace them."""
from __future__ import annotations

import threading
import time

from app_helpers import computed, ok, open_page

from peru_core import experiments
from ui import state
from ui.jobs import jobs


def test_estimates_first_then_exact_numbers(app, monkeypatch):
    release = threading.Event()
    exact = experiments.run_spec

    def held_run_spec(*args, **kwargs):  # the exact pass waits until the page has shown the estimates
        release.wait(60)
        return exact(*args, **kwargs)

    at = open_page(app, "pages/1_Merge_lab.py")  # Home has computed the references by now
    monkeypatch.setattr(experiments, "run_spec", held_run_spec)
    ok(at.slider(key=state.LAB_KEEP).set_value(30.0).run())
    ok(at.button(key=state.LAB_COMPUTE).click().run())
    job = next(j for j in jobs()._by_key.values() if j.active)
    deadline = time.monotonic() + 60
    while job.updates == 0 and time.monotonic() < deadline:  # the estimate pass reports each spec
        time.sleep(0.05)
    ok(at.run())
    try:
        assert job.active
        table = at.table[0].value
        row = table.loc["PERU-FFT (Task Arithmetic) 30%"]
        assert all("(est." in cell for cell in row), row  # every cell says it is an estimate
        assert any("95% confidence interval" in c.value and "replace the estimates" in c.value for c in at.caption)
    finally:
        release.set()
    at = computed(at)
    table = at.table[0].value
    row = table.loc["PERU-FFT (Task Arithmetic) 30%"]
    assert not any("est." in str(v) for v in row)
    assert not any("estimate" in c.value for c in at.caption)


def test_the_compute_run_itself_shows_the_estimates(app, monkeypatch):
    """Pressing Compute waits (briefly) for the estimates and draws them in the same run: no poll, no second run."""
    release = threading.Event()
    exact = experiments.run_spec

    def held_run_spec(*args, **kwargs):
        release.wait(60)
        return exact(*args, **kwargs)

    at = open_page(app, "pages/1_Merge_lab.py")
    monkeypatch.setattr(experiments, "run_spec", held_run_spec)
    ok(at.slider(key=state.LAB_KEEP).set_value(25.0).run())
    try:
        ok(at.button(key=state.LAB_COMPUTE).click().run())
        row = at.table[0].value.loc["PERU-FFT (Task Arithmetic) 25%"]
        assert all("(est." in cell for cell in row), row
        assert any("95% confidence interval" in c.value for c in at.caption)
        assert at.button(key=state.LAB_COMPUTE).disabled  # the job runs: not a second press of the same work
    finally:
        release.set()
    computed(at)


def test_a_job_that_ends_during_the_wait_shows_its_results(app, monkeypatch):
    """A job that ends before any estimate is shown (here: it makes none; the tiny zoo takes well under the wait):
    the same press shows the exact numbers, not "not computed yet"."""
    at = open_page(app, "pages/1_Merge_lab.py")
    monkeypatch.setattr(experiments, "estimate_spec", lambda *args, **kwargs: None)
    ok(at.slider(key=state.LAB_KEEP).set_value(35.0).run())
    ok(at.button(key=state.LAB_COMPUTE).click().run())
    assert not any("not computed yet" in i.value for i in at.info)
    assert "PERU-FFT (Task Arithmetic) 35%" in at.table[0].value.index


def test_wait_news_returns_on_an_update_or_the_end():
    from ui.jobs import Job

    job = Job("k", "work", state="running")
    assert job.wait_news(0, 0.01) is False  # nothing new: the timeout
    threading.Timer(0.05, job.updated).start()
    assert job.wait_news(0, 30) is True and job.updates == 1
    done = Job("k2", "work", state="done")
    assert done.wait_news(0, 30) is True  # an ended job never blocks
