"""The one error type users see: a single sentence saying what is wrong and how to fix it."""


class PeruError(ValueError):
    """Bad input (checkpoint, manifest, parameter). ``str(err)`` is one user-facing sentence.

    The CLI prints it on stderr without a traceback; the dashboard shows it with ``st.error``.
    """
