"""Merge algorithms, one file each; importing this package registers them all (see registry.py)."""
import importlib
import pkgutil

from peru_core.merging.registry import MergeContext, MergeMethod, Param, get_method, list_methods, merge_method

# The order methods are listed in (menus, sweeps, tables): the paper's merges, then the rest of the field by family;
# a module not named here (a new method is a new file; no list needs editing) follows in alphabetical order.
_ORDER = ("average", "fisher", "regmean", "task_arithmetic", "ties",
          "dare", "breadcrumbs", "magmax", "consensus", "lines", "model_stock", "tsv", "iso", "adamerging")
_found = {m.name for m in pkgutil.iter_modules(__path__)} - {"registry"}
for _name in [n for n in _ORDER if n in _found] + sorted(_found - set(_ORDER)):
    if not _name.startswith("_"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["MergeContext", "MergeMethod", "Param", "get_method", "list_methods", "merge_method"]
