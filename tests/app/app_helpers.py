"""Helpers for the AppTest tests (a plain module: "conftest" names clash between test folders)."""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
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


def _decode(x: Any) -> Any:
    """Plotly's JSON writes numeric arrays as ``{"dtype", "bdata", "shape"}`` (base64): back to (nested) lists."""
    if isinstance(x, dict) and "bdata" in x and "dtype" in x:
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        shape = [int(n) for n in str(x.get("shape", a.size)).split(",")]
        return a.reshape(shape).tolist()
    if isinstance(x, dict):
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure drawn under ``key``, as a dict of plain lists."""
    found = [c for c in at.get("plotly_chart") if c.proto.id and key in c.proto.id]
    assert found, f"no chart {key}"
    return _decode(json.loads(found[0].proto.spec))
