"""What only a browser shows (issue 14): the radio a switch of fine-tunes leaves selected, settings that survive a
reload (they are in the URL), a compute that survives a reload, and text that is cut off at 1024, 1280 and
1400 px."""
from __future__ import annotations

import re

import pytest

from harness import key, move_slider, open_page, wait_idle

pytestmark = pytest.mark.browser
WIDTHS = (1024, 1280, 1400)


def _radio(page, label: str):
    """The radio group whose label is ``label`` (whatever its key)."""
    return page.locator("[data-testid='stRadio']").filter(
        has=page.locator("[data-testid='stWidgetLabel']", has_text=re.compile(f"^{re.escape(label)}$")))


def _checked(page, label: str) -> list[str]:
    """The option labels of radio group ``label`` that the browser shows as selected."""
    group = _radio(page, label)
    return group.first.evaluate(
        "g => [...g.querySelectorAll('input[type=radio]')].filter(i => i.checked)"
        ".map(i => i.closest('label').innerText.trim())")


def _choose(page, label: str, option: str) -> None:
    _radio(page, label).first.locator("label").filter(has_text=re.compile(f"^{re.escape(option)}$")).first.click()
    wait_idle(page)


def test_switching_fine_tunes_leaves_a_selected_reuse_mode(tiny_page, tiny_app_url):
    page = tiny_page
    """Item 1: PERU-FFT, then LoRA: the browser showed no option selected (the radio kept PERU-FFT's index
    for a list of two); back to Full, none of three."""
    open_page(tiny_page, tiny_app_url, "Merge_lab")
    _choose(page, "Task-specific part", "PERU-FFT")
    assert _checked(page, "Task-specific part") == ["PERU-FFT"]
    _choose(page, "Fine-tunes", "LoRA fine-tunes")
    assert _checked(page, "Task-specific part") == ["PERU-LoRA"]
    _choose(page, "Fine-tunes", "Full fine-tunes")
    assert _checked(page, "Task-specific part") == ["PERU-FFT"]


def _slider_value(page, name: str) -> str:
    thumb = page.locator(f"{key(name)} input[type='range'], {key(name)} [role='slider']").first
    return thumb.get_attribute("aria-valuenow") or thumb.input_value()


def test_settings_survive_a_reload_and_a_compute_in_flight_is_not_lost(tiny_page, tiny_app_url):
    page = tiny_page
    """Item 4: the m% slider moved, Compute pressed, the page reloaded at once: the slider keeps its value (it is
    in the URL) and the computation finishes and shows (it ran as a job, not inside the page that went away)."""
    open_page(tiny_page, tiny_app_url, "Merge_lab")
    _choose(page, "Fine-tunes", "Full fine-tunes")
    _choose(page, "Task-specific part", "PERU-FFT")
    move_slider(page, "lab_keep", +7)  # 10% -> 17%, a setting nothing computed before
    wait_idle(page)
    assert "lab_keep=17" in page.url
    page.locator(f"{key('lab_compute')} button").click()
    page.wait_for_timeout(300)
    page.reload()
    page.wait_for_selector("[data-testid='stApp']")
    wait_idle(page, started=3.0)
    assert float(_slider_value(page, "lab_keep")) == 17.0
    page.locator(key("lab_results")).filter(has_text="PERU-FFT (Task Arithmetic) 17%").first.wait_for(
        timeout=600_000)


def _cut_off(page, selector: str) -> list[str]:
    """Texts under ``selector`` that their box cuts off (an ellipsis, or content wider than the box)."""
    return page.evaluate(
        """sel => [...document.querySelectorAll(sel)].filter(e => e.offsetParent !== null && (
               e.scrollWidth > e.clientWidth + 3 ||
               [...e.querySelectorAll('*')].some(c => getComputedStyle(c).textOverflow === 'ellipsis'
                                                      && c.scrollWidth > c.clientWidth + 3)))
           .map(e => e.innerText.trim().slice(0, 60))""", selector)


def _hidden_chips(page) -> list[str]:
    """Multiselects whose chips do not all show: a chip row wider than its box (one scrolling row hides chips)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=stMultiSelect]')].filter(ms =>
               [...ms.querySelectorAll('*')].some(e => e.querySelector('[data-baseweb=tag], [role=button]') &&
                                                        e.scrollWidth > e.clientWidth + 3))
           .map(ms => ms.innerText.split('\\n')[0])""")


TEXT = ("[data-testid='stMetricValue'], [data-testid='stMetricLabel'], [data-testid='stMetricDelta'], "
        "[data-testid='stBaseButton-primary'], [data-testid='stBaseButton-secondary'], .katex-display")


@pytest.mark.parametrize("path, ready", [("Merge_lab", "lab_results"), ("Trade-offs", "to_answer")])
def test_nothing_is_cut_off_at_three_widths(tiny_page, tiny_app_url, path, ready):
    page = tiny_page
    """Item 18: "Compute the mis...", chips hidden in a one-row multiselect, the formula and "89.6..."."""
    open_page(tiny_page, tiny_app_url, path)
    button = page.locator(f"{key('lab_compute' if path == 'Merge_lab' else 'to_compute')} button").first
    if button.is_enabled():
        button.click()
    page.locator(key(ready)).wait_for(timeout=900_000)
    page.locator(f"{key('lab_job')}, {key('to_job')}").first.wait_for(state="detached", timeout=900_000)
    wait_idle(page)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(800)
        assert _cut_off(page, TEXT) == [], (width, "sub-pixel rounding aside (3 px)")
        assert _hidden_chips(page) == [], width
