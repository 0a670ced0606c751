"""Page frame: config, the teaching intro (two or three sentences and a formula), user-facing errors."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import wraps
from typing import Any, Callable, Iterator

import streamlit as st

from peru_core.errors import PeruError

PAPER = "https://arxiv.org/abs/2310.01886"
log = logging.getLogger("peru_studio")


def setup(title: str, icon: str) -> None:
    """First call of every page (each page also works when opened directly)."""
    st.set_page_config(page_title=f"{title} · PERU Studio", page_icon=icon, layout="wide")


def intro(title: str, text: str, formula: str, mirrors: str) -> None:
    """The page's opening: what it shows, how to read it, the formula, and the paper's table or figure."""
    st.title(title)
    st.markdown(text)
    st.latex(formula)
    st.caption(f"Mirrors {mirrors} of the [PERU paper]({PAPER}).")


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a :class:`PeruError` as one sentence (never a traceback) and stop the page there.

    Any other exception is a bug: its traceback goes to the server log and the page says so in one sentence.
    (Streamlit's stop and rerun signals are BaseExceptions and pass through.)"""
    try:
        yield
    except PeruError as e:
        log.info("user error: %s", e)
        st.error(str(e))
        st.stop()
    except Exception as e:  # noqa: BLE001 - the last line of defence of a page
        log.exception("unexpected error")
        st.error(f"Something went wrong ({type(e).__name__}); the details are in the server log. Try another "
                 "setting, or report it with the log.")
        st.stop()


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`user_errors` around a function (fragments rerun alone, outside the page's own guard)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return fn(*args, **kwargs)

    return run
