"""A real browser on the demo zoo: a new m% in the Merge lab shows its quick estimates (marked "est.", with their
interval and a caption) while the same job evaluates the full test sets, then the exact numbers replace them.
Prints (does not assert) how long the estimate and the exact numbers take to appear."""
from __future__ import annotations

import time

import pytest

from harness import key, move_slider, open_page, screenshot, wait_idle

pytestmark = pytest.mark.browser


def test_new_m_shows_estimates_then_exact(page, app_url, shots):
    open_page(page, app_url)  # Home: the references are evaluated
    page.locator(key("home_bars")).wait_for(timeout=300_000)
    open_page(page, app_url, "Merge_lab")
    compute = page.locator(f"{key('lab_compute')} button")
    compute.wait_for(timeout=60_000)
    if compute.is_enabled():  # another test of this session may have computed the default setting already
        compute.click()
    page.locator(key("lab_results")).filter(has_text="PERU-FFT (Task Arithmetic) 10%").wait_for(timeout=300_000)
    wait_idle(page, started=0.5)

    move_slider(page, "lab_keep", +2)
    wait_idle(page)
    t = time.monotonic()
    page.locator(f"{key('lab_compute')} button").click()
    # the estimates of the new setting (its row names 12%) and their caption on screen together, however many
    # reruns it takes to draw them (the caption is drawn just after the table)
    page.wait_for_function(
        "() => { const e = document.querySelector('.st-key-lab_estimate');"
        " return !!e && e.innerText.includes('(est.') && e.innerText.includes('12%')"
        " && document.body.innerText.includes('95% confidence interval (Wilson)'); }", timeout=120_000)
    estimate = time.monotonic() - t
    screenshot(page, shots / "merge_lab_estimate.png" if shots else None)
    page.locator(key("lab_results")).filter(has_text="PERU-FFT (Task Arithmetic) 12%").wait_for(timeout=300_000)
    exact = time.monotonic() - t
    wait_idle(page, started=0.5)
    assert "est." not in page.locator(key("lab_table")).first.inner_text()
    assert page.locator(key("lab_estimate")).count() == 0
    print(f"\nnew m%: estimate shown after {estimate:.2f} s, exact numbers after {exact:.2f} s")
