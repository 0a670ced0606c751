"""AppTest fixtures: every page driven through app.py on the tiny test zoo, with an empty PERU_HOME and no caches
left over from another test (Streamlit's caches live as long as the process)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui import cache

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


@pytest.fixture()
def app(tiny_zoo_dir, peru_home, monkeypatch) -> AppTest:
    """A fresh AppTest of app.py whose demo zoo is the tiny zoo."""
    monkeypatch.setenv("PERU_DEMO_ZOO", str(tiny_zoo_dir))
    cache.clear_all()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    yield at
    cache.clear_all()
