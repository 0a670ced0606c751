"""Take a screenshot of every page (docs/screenshots/*.png) with Debian's Chromium.

    python3 scripts/screenshots.py [--out docs/screenshots] [--home DIR]

Starts ``streamlit run app.py`` on a free port with ``PERU_HOME`` in a temporary folder (or ``--home``, to reuse a
results store), computes what each page needs by pressing its buttons, and saves full-page PNGs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from harness import chromium, key, open_page, screenshot, streamlit_server, wait_idle, wait_jobs  # noqa: E402

PAGES = [  # (url path, file name, buttons to press in order, key of what must be there before the shot)
    ("", "home", [], "home_bars"),
    ("Merge_lab", "merge_lab", ["lab_compute"], "lab_results"),
    ("Trade-offs", "tradeoffs", ["to_compute"], "to_answer"),
    ("Spectra", "spectra", [], "sp_lora_spectrum"),
    ("Embeddings", "embeddings", ["em_compute"], "em_quality"),
    ("Upload", "upload", [], "up_name"),
]
TABS = {  # more shots of a page: (tab label, key that must be there, file name)
    "spectra": [("Full", "sp_full_spectrum", "spectra_full"),
                ("|u_t| top-m%", "sp_histogram", "spectra_threshold")],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--home", type=Path, default=None, help="PERU_HOME to use (default: a temporary folder)")
    ap.add_argument("--pages", nargs="*", default=None, help="file names to take (default: all), e.g. spectra")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="peru_shots_"))
    home.mkdir(parents=True, exist_ok=True)
    with streamlit_server({"PERU_HOME": str(home)}, home / "streamlit.log") as url, chromium() as page:
        for path, name, buttons, ready in PAGES:
            if args.pages and name not in args.pages:
                continue
            t = time.monotonic()
            open_page(page, url, path)
            for b in buttons:
                button = page.locator(f"{key(b)} button")
                button.first.wait_for(timeout=600_000)  # the page may still be loading the zoo
                if button.first.is_enabled():
                    button.first.click()
                    wait_idle(page, started=3.0, timeout=600)
            page.wait_for_selector(key(ready), timeout=600_000)
            wait_jobs(page, timeout=600)  # computations run as jobs: the page shows results once they end
            page.wait_for_timeout(1500)  # let plotly finish drawing
            screenshot(page, args.out / f"{name}.png")
            print(f"{name}: {time.monotonic() - t:.1f} s -> {args.out / (name + '.png')}", flush=True)
            for tab, ready_tab, shot in TABS.get(name, []):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_selector(key(ready_tab), timeout=600_000)
                wait_idle(page, started=0.5, timeout=600)
                page.wait_for_timeout(1500)
                screenshot(page, args.out / f"{shot}.png")
                print(f"{shot} -> {args.out / (shot + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
