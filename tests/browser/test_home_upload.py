"""What only a browser shows on Home and Upload: text cut off at common window widths, markdown turning a table cell
into a bullet, and the file uploader's own type filter (it refused a .pt with a bare "files are not allowed")."""
from __future__ import annotations

import pytest
import torch

from harness import key, open_page, wait_idle

pytestmark = pytest.mark.browser

CUT = """() => [...document.querySelectorAll(
    '[data-testid=stMetricValue] *, [data-testid=stMetricLabel] *, [data-testid=stMain] code, [data-testid=stTable] td')]
    .filter(e => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).textOverflow === 'ellipsis')
    .map(e => e.textContent)"""


@pytest.mark.parametrize("width", [1024, 1280, 1400])
def test_home_shows_every_name_and_number_whole(page, app_url, width):
    """Item 18 of issue 14 ("peru-tiny..." on Home) and item 15 (a licence of "-" rendered as a bullet)."""
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(app_url)  # the tiles and the task table come before the references (evaluated on a first visit)
    page.locator("[data-testid=stTable]").first.wait_for(timeout=300_000)
    page.locator("[data-testid=stMetricValue]").nth(3).wait_for()
    page.wait_for_timeout(500)
    assert page.evaluate(CUT) == []
    cells = page.locator("[data-testid=stTable] td").all_inner_texts()
    assert cells and not any(c.strip() in ("•", "-") for c in cells)
    assert "architecture" in page.locator("[data-testid=stMain]").inner_text()


def test_a_pt_base_file_gets_the_convert_sentence(page, app_url, tmp_path):
    """Item 13: a .pt base showed only the uploader's red "files are not allowed" chip and "Add the base model"."""
    torch.save({"w": torch.zeros(2)}, tmp_path / "base.pt")
    open_page(page, app_url, "Upload")
    page.locator(f"{key('up_base')} input[type=file]").set_input_files(str(tmp_path / "base.pt"))
    page.get_by_text("python -m peru_core convert").first.wait_for(timeout=120_000)
    wait_idle(page, started=0.5)
    text = page.locator("[data-testid=stMain]").inner_text()
    assert "base.pt is a pickle" in text
    assert "not allowed" not in text and "Add the base model" not in text
