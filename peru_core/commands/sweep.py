"""``python -m peru_core sweep --zoo demo --out results.csv``: the paper's table for a zoo (Table 1 layout).

Results come from the results store when present (``$PERU_HOME``), so a second run is quick.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from peru_core.errors import PeruError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="compute the paper's table for a zoo (per-task accuracy, #params, bytes)")
    p.add_argument("--zoo", default="demo", help="'demo' (the built-in zoo) or a zoo folder holding zoo.json")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="merge methods to include (default: all registered)")
    p.add_argument("--keeps", nargs="+", type=float, default=None, help="m%% values (default 1 5 10 20)")
    p.add_argument("--ranks", nargs="+", type=int, default=None, help="q values (default 1 2 4 8 16)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-store", action="store_true", help="compute everything again, store nothing")
    p.add_argument("--out", required=True, help="CSV file to write (one row per method setting)")
    p.set_defaults(func=run)


def _progress(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r[{fraction * 100:5.1f}%] {message[:100]:<100}")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from peru_core import experiments
    from peru_core.io import atomic_file
    from peru_core.store import ResultsStore
    from peru_core.table import format_table, paper_table
    from peru_core.zoo import demo_zoo, load_zoo
    from peru_core.zoo.runtime import ZooRuntime

    out = Path(args.out)
    if not out.parent.exists():
        raise PeruError(f"Folder {out.parent} does not exist; create it or pick another --out path.")
    if args.keeps and any(not 0 <= k <= 100 for k in args.keeps):  # before the zoo is read
        raise PeruError("Every --keeps value must be a percent in [0, 100].")
    t0 = time.perf_counter()
    zoo = demo_zoo() if args.zoo == "demo" else load_zoo(args.zoo)
    runtime = ZooRuntime(zoo, device=args.device)
    kwargs = {k: v for k, v in (("keeps", args.keeps), ("ranks", args.ranks)) if v is not None}
    specs = experiments.paper_specs(runtime, merges=args.methods, **kwargs)
    store = None if args.no_store else ResultsStore()
    rows = experiments.run_specs(runtime, specs, store, on_progress=_progress)
    sys.stderr.write("\n")
    labels = {t.name: t.label for t in zoo.tasks}
    table = paper_table(rows, labels)
    with atomic_file(out) as tmp:
        table.round(4).to_csv(tmp)
    print(format_table(table))
    cached = int(rows["cached"].sum()) if len(rows) else 0
    print(f"\n{len(specs)} settings x {len(zoo.tasks)} tasks on {runtime.device}; {cached} of {len(rows)} rows "
          f"from the results store; {time.perf_counter() - t0:.1f} s; wrote {out}")
    return 0
