"""Merge algorithms, one file each; importing this package registers them all (see registry.py)."""
import importlib
import pkgutil

from peru_core.merging.registry import MergeContext, MergeMethod, Param, get_method, list_methods, merge_method

# Register every method module in this folder (a new method is a new file; no list to edit).
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "registry" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["MergeContext", "MergeMethod", "Param", "get_method", "list_methods", "merge_method"]
