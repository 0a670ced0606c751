"""Shared fixtures: a tiny real zoo (built once per session) and an isolated PERU_HOME per test."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# No test downloads anything: hf:// references resolve from caches the tests build (tests/core/hub_cache.py).
os.environ["HF_HUB_OFFLINE"] = "1"

from tiny_zoo import build_tiny_zoo  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo_dir(tmp_path_factory) -> Path:
    """A complete tiny zoo folder (read-only for tests: copy it before changing files)."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo"))


@pytest.fixture()
def peru_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty PERU_HOME for one test."""
    home = tmp_path / "peru_home"
    monkeypatch.setenv("PERU_HOME", str(home))
    return home
