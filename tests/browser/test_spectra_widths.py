"""Spectra at the three window widths a reader uses (1024, 1280, 1400 px): no text is cut off (formula, tab labels,
pickers, metrics, the ablation views), and every line of every spectrum is named by a legend entry that is not scrolled out of view.
(Issue 14, items 17 and 18.)"""
from __future__ import annotations

import pytest

from harness import key, open_page, wait_idle

pytestmark = pytest.mark.browser

WIDTHS = (1024, 1280, 1400)
TABS = (("LoRA", "sp_lora_spectrum"), ("Full", "sp_full_spectrum"), ("|u_t| top-m%", "sp_histogram"),
        ("Similarity", "sp_sim_heatmap"), ("Per layer", "sp_layout_bars"), ("Table 6", "sp_t6_error"))
SPECTRA = ("sp_lora_spectrum", "sp_full_spectrum")  # the charts whose every line must be named in the legend

# Elements of the main area that clip their text (overflow hidden/auto/scroll or an ellipsis) and hold more than they
# show. KaTeX's MathML copy is invisible by design (1 px wide, for screen readers) and plotly draws in SVG: skip both.
CUT_TEXT_JS = """() => {
  const out = [];
  for (const el of document.querySelectorAll('[data-testid=stMain] *')) {
    if (el.closest('.js-plotly-plot') || el.closest('.katex-mathml')) continue;
    const cs = getComputedStyle(el);
    const clips = cs.overflowX !== 'visible' || cs.textOverflow === 'ellipsis';
    const text = (el.innerText || '').trim();
    if (clips && text && el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 3)
      out.push(`${el.getAttribute('data-testid') || el.className}: ${text.slice(0, 60)} (${el.scrollWidth} > ${el.clientWidth} px)`);
  }
  return out;
}"""

# Per plotly chart: traces that carry a name but have no legend entry, and whether the legend scrolls.
LEGEND_JS = """(sel) => {
  const gd = document.querySelector(sel + ' .js-plotly-plot');
  const named = gd.data.filter(t => t.showlegend !== false && t.name).map(t => t.name);
  const shown = [...gd.querySelectorAll('.legend .legendtext')].map(e => e.textContent);
  const bar = gd.querySelector('.legend .scrollbar');
  const scrolls = !!bar && bar.getBBox().height > 0;
  return {missing: named.filter(n => !shown.includes(n)), scrolls: scrolls, hidden: gd.layout.showlegend === false};
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_spectra_shows_everything_at(width, page, app_url):
    page.set_viewport_size({"width": width, "height": 900})
    open_page(page, app_url, "Spectra")
    for tab, chart in TABS:
        page.get_by_role("tab", name=tab, exact=True).click()
        page.locator(key(chart)).wait_for(timeout=300_000)
        wait_idle(page, started=0.5)
        page.wait_for_timeout(800)  # plotly lays out its legend after the script run
        assert page.locator("[data-testid='stException']").count() == 0
        cut = page.evaluate(CUT_TEXT_JS)
        assert not cut, f"{tab} at {width} px cuts: {cut}"
        if chart in SPECTRA:
            legend = page.evaluate(LEGEND_JS, key(chart))
            assert not legend["hidden"] and not legend["missing"], f"{tab} at {width} px: unnamed lines {legend}"
            assert not legend["scrolls"], f"{tab} at {width} px: the legend scrolls some lines out of view"
