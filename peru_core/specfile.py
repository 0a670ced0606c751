"""Spec files: any list of run specs (the Trade-offs page's sweep, a table of one's own) for ``sweep --specs``.

A spec file is a JSON list; each entry names one setting with the fields of :meth:`RunSpec.key`, e.g.::

    [{"mode": "pretrained"},
     {"mode": "peru-fft", "source": "full", "merge": "task_arithmetic", "params": {"lam": 0.3}, "keep": 10},
     {"mode": "peru-lora", "source": "lora", "rank": 4}]

Missing fields take :meth:`RunSpec.make`'s defaults (a merge's parameters: the registry's defaults).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from peru_core.errors import PeruError
from peru_core.spec import RunSpec

FIELDS = ("mode", "source", "merge", "params", "keep", "rank", "scope")


def read_spec_file(path: str | Path) -> list[RunSpec]:
    """The validated specs of the JSON file at ``path``, in file order; a one-sentence PeruError naming the entry
    that is wrong otherwise."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError:
        raise PeruError(f"Spec file {path} cannot be read; check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PeruError(f"Spec file {path} is not valid JSON ({e}); fix the file.") from None
    if not isinstance(raw, list) or not raw:
        raise PeruError(f"Spec file {path} should hold a non-empty JSON list of specs like {{\"mode\": \"merge\", "
                        "\"merge\": \"ties\"}.")
    specs = []
    for n, entry in enumerate(raw, 1):
        if not isinstance(entry, dict) or "mode" not in entry:
            raise PeruError(f"Entry {n} of spec file {path} should be an object with at least a \"mode\".")
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            raise PeruError(f"Entry {n} of spec file {path} has unknown field {unknown[0]!r}; use only "
                            f"{', '.join(FIELDS)}.")
        try:
            params = entry.get("params")
            if isinstance(params, list):  # the store key's form: [[name, value], ...]
                params = dict(params)
            specs.append(RunSpec.make(**{**entry, "params": params}))
        except PeruError as e:
            raise PeruError(f"Entry {n} of spec file {path}: {e}") from None
        except (TypeError, ValueError) as e:
            raise PeruError(f"Entry {n} of spec file {path} has a value of the wrong kind ({e}); give numbers for "
                            "keep, rank and params.") from None
    return specs


def spec_file_text(specs: Sequence[RunSpec]) -> str:
    """A spec file holding ``specs`` (what :func:`read_spec_file` reads back as the same specs)."""
    return json.dumps([json.loads(s.key()) for s in specs], indent=1) + "\n"
