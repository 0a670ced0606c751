"""Streamlit glue shared by the pages: state keys, the sidebar, cached wrappers and widgets built from the
merge registry. The only package besides app.py and pages/ that imports streamlit."""
