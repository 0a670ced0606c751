"""Start ``streamlit run app.py`` on a free port and drive it with Debian's Chromium through Playwright.

Used by the browser tests (conftest.py) and by scripts/screenshots.py. Never runs ``playwright install``:
the browser is /usr/bin/chromium (``apt-get install chromium``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PERU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
RUNNING = "[data-testid='stApp'][data-test-script-state='running']"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(env: dict[str, str], log_path: Path, timeout: float = 90.0) -> Iterator[str]:
    """Yield the URL of a running ``streamlit run app.py``; stop it (and only it) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
           str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not answer /_stcore/health in {timeout:.0f} s; see {log_path}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium(width: int = 1500, height: int = 1000) -> Iterator[object]:
    """A Playwright page in Debian's Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(120_000)
            yield page
        finally:
            browser.close()


def wait_idle(page, started: float = 1.5, timeout: float = 180.0) -> None:
    """Wait until the script run triggered by the last action has finished.

    A rerun may start a moment after the action: wait up to ``started`` seconds to see it run, then for idle."""
    try:
        page.wait_for_selector(RUNNING, timeout=started * 1000)
    except Exception:  # it may already have finished (or never rerun)
        pass
    page.wait_for_selector(IDLE, timeout=timeout * 1000)


def wait_jobs(page, timeout: float = 900.0) -> None:
    """Wait until the page shows no running computation (the ``<name>_job`` progress containers of ui.jobs are
    gone), then for the rerun that draws the results."""
    page.wait_for_function(
        "() => ![...document.querySelectorAll('[class*=\"st-key-\"]')]"
        ".some(e => [...e.classList].some(c => /^st-key-.*_job$/.test(c)))", timeout=timeout * 1000)
    wait_idle(page, started=1.0, timeout=timeout)


def open_page(page, url: str, path: str = "", timeout: float = 180.0) -> None:
    """Load ``url/path`` and wait for the first run to finish."""
    page.goto(f"{url}/{path}")
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout * 1000)
    wait_idle(page, started=3.0, timeout=timeout)


def key(name: str) -> str:
    """CSS selector of the widget or container with ``key=name``."""
    return f".st-key-{name}"


def move_slider(page, name: str, steps: int) -> None:
    """Focus the slider's thumb and press the arrow keys (one step each). Streamlit 1.67's slider is a react-aria
    slider whose thumb is a visually hidden ``input[type=range]``."""
    thumb = page.locator(f"{key(name)} input[type='range'], {key(name)} [role='slider']").first
    thumb.focus()
    for _ in range(abs(steps)):
        thumb.press("ArrowRight" if steps > 0 else "ArrowLeft")


def screenshot(page, path: Optional[Path], width: int = 1500) -> None:
    """A PNG of the whole page: Streamlit scrolls inside its main section, so grow the viewport to fit it first."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                           "[data-testid=stMainBlockContainer]')].map(e => e.scrollHeight), 800)")
    old = page.viewport_size
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(800)  # plotly redraws at the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(old)
