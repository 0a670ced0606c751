"""A real browser: open the app, run a merge on the demo zoo, move the m% slider with the keyboard, see the table
and the plots follow. Prints (does not assert) how long a computed setting and a new PERU-FFT setting take."""
from __future__ import annotations

import time

import pytest

from harness import key, move_slider, open_page, screenshot, wait_idle

pytestmark = pytest.mark.browser


def _wait_text(page, name: str, text: str, timeout: float = 300.0) -> float:
    """Seconds until the element with key ``name`` shows ``text``."""
    t = time.monotonic()
    page.locator(key(name)).filter(has_text=text).first.wait_for(timeout=timeout * 1000)
    return time.monotonic() - t


def test_merge_then_move_the_m_slider(page, app_url, shots):
    open_page(page, app_url)  # Home: the demo zoo is loaded and its references evaluated
    page.locator(key("home_bars")).wait_for(timeout=300_000)
    assert "PERU Studio" in page.locator("h1").first.inner_text()

    open_page(page, app_url, "Merge_lab")
    assert page.locator("[data-testid='stException']").count() == 0
    page.locator(f"{key('lab_compute')} button").click()
    _wait_text(page, "lab_results", "PERU-FFT (Task Arithmetic) 10%")
    _wait_text(page, "lab_table", "PERU-FFT (Task Arithmetic) 10%")
    wait_idle(page, started=0.5)

    # a new PERU-FFT setting: one arrow key, then Compute
    move_slider(page, "lab_keep", +1)
    wait_idle(page)
    button = page.locator(f"{key('lab_compute')} button")
    assert button.is_enabled()
    t = time.monotonic()
    button.click()
    _wait_text(page, "lab_results", "PERU-FFT (Task Arithmetic) 11%")
    page.locator(f"{key('lab_bars')} .legendtext").filter(has_text="11%").first.wait_for()
    new_setting = time.monotonic() - t
    _wait_text(page, "lab_table", "PERU-FFT (Task Arithmetic) 11%")
    wait_idle(page, started=0.5)
    screenshot(page, shots / "merge_lab_browser.png" if shots else None)

    # back to a computed setting: shown from the results store, no button
    t = time.monotonic()
    move_slider(page, "lab_keep", -1)
    _wait_text(page, "lab_results", "PERU-FFT (Task Arithmetic) 10%")
    page.locator(f"{key('lab_bars')} .legendtext").filter(has_text="10%").first.wait_for()
    back = time.monotonic() - t
    _wait_text(page, "lab_table", "PERU-FFT (Task Arithmetic) 10%")
    wait_idle(page, started=0.5)
    assert not page.locator(f"{key('lab_compute')} button").is_enabled()
    print(f"\nslider back to a computed setting: {back:.2f} s (target <= 1 s); "
          f"new PERU-FFT setting computed and drawn: {new_setting:.2f} s (target <= 10 s)")
