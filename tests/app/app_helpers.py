"""Helpers for the AppTest tests (a plain module: "conftest" names clash between test folders)."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest


def ok(at: AppTest) -> AppTest:
    """Fail with the page's own words when it raised or showed an error."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    """Run Home once (as a browser session does), then switch to ``page`` (e.g. "pages/1_Merge_lab.py")."""
    ok(at.run())
    return ok(at.switch_page(page).run())


def computed(at: AppTest) -> AppTest:
    """Wait for the computations the last run started (they run as background jobs), then rerun the page."""
    from ui.jobs import jobs

    jobs().wait_all()
    return ok(at.run())


def press(at: AppTest, key: str) -> AppTest:
    """Press a Compute button and return the page once what it started has finished."""
    ok(at.button(key=key).click().run())
    return computed(at)
