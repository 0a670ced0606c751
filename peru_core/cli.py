"""``python -m peru_core``: the same engine as the dashboard, from the command line.

Each sub-command lives in ``peru_core/commands/<name>.py`` with ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors (:class:`PeruError`) print one line on stderr and exit 2; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from peru_core.errors import PeruError

COMMANDS = ("merge", "reuse", "lora", "sweep", "convert", "zoo_new")  # zoo_new: `zoo new`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m peru_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"peru_core.commands.{name}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from peru_core.device import configure_threads  # torch: imported only once a command runs

        # once, at engine start: torch's threads from the cores actually free ($PERU_THREADS overrides)
        configure_threads()
        return int(args.func(args) or 0)
    except PeruError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
