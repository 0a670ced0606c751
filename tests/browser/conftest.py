"""Browser fixtures: one ``streamlit run app.py`` per session (PERU_HOME in a temporary folder) and a Chromium
page per test. The demo zoo (assets/zoo) is used when it is built, else the tiny test zoo."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness import CHROMIUM, ROOT, chromium, streamlit_server


@pytest.fixture(scope="session")
def app_url(tmp_path_factory, tiny_zoo_dir) -> str:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    home = tmp_path_factory.mktemp("peru_home")
    demo = ROOT / "assets" / "zoo"
    env = {"PERU_HOME": str(home)}
    if not (demo / "zoo.json").is_file():
        env["PERU_DEMO_ZOO"] = str(tiny_zoo_dir)
    print(f"\nbrowser test zoo: {env.get('PERU_DEMO_ZOO', demo)}")
    with streamlit_server(env, home / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="session")
def tiny_app_url(tmp_path_factory, tiny_zoo_dir) -> str:
    """A server on the tiny test zoo (computes in seconds): for tests of page state, not of the demo's numbers."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    home = tmp_path_factory.mktemp("peru_home_tiny")
    with streamlit_server({"PERU_HOME": str(home), "PERU_DEMO_ZOO": str(tiny_zoo_dir)},
                          home / "streamlit.log") as url:
        yield url


@pytest.fixture()
def page(app_url):
    with chromium() as p:
        yield p


@pytest.fixture()
def tiny_page(tiny_app_url):
    with chromium() as p:
        yield p


@pytest.fixture()
def shots() -> Path | None:
    """Where to save screenshots ($PERU_SCREENSHOTS), or None."""
    d = os.environ.get("PERU_SCREENSHOTS")
    return Path(d) if d else None
