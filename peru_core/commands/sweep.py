"""``python -m peru_core sweep --zoo demo --out results.csv``: the paper's table for a zoo (Table 1 layout).

Results come from the results store when present (``$PERU_HOME``), so a second run is quick. ``--specs FILE`` runs
any list of specs instead (see :mod:`peru_core.specfile`); ``--ray [ADDRESS]`` runs them on Ray workers
(docs/ray.md), with the same rows, table and store.
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
    p.add_argument("--methods", nargs="+", metavar="NAME",
                   help="merge methods to include, or the mask-reuse modes tall and emr (default: the paper's five: "
                   "average task_arithmetic fisher regmean ties)")
    p.add_argument("--keeps", nargs="+", type=float, default=None, help="m%% values (default 1 5 10 20)")
    p.add_argument("--ranks", nargs="+", type=int, default=None, help="q values (default 1 2 4 8 16)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", default="float32", choices=("float32", "bf16"),
                   help="evaluation precision: float32 (default) or bf16 (a GPU, or a CPU with AVX512-BF16 or AMX: "
                   "autocast of the image tower's matrix products; its rows are stored apart from float32 ones)")
    p.add_argument("--no-store", action="store_true", help="compute everything again, store nothing")
    p.add_argument("--specs", metavar="FILE", help="a JSON spec file to run instead of the paper's table "
                   "(--methods, --keeps and --ranks then do not apply)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a local Ray runtime on this machine; 'auto' or 'ray://host:10001', "
                        "an existing cluster (docs/ray.md)")
    p.add_argument("--workers", type=int, help="with --ray: worker actors (default: one per GPU, else per CPU)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="with --ray: restarts of a worker whose process dies, re-running its unfinished specs")
    p.add_argument("--out", required=True, help="CSV file to write (one row per method setting)")
    p.set_defaults(func=run)


def _progress(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r[{fraction * 100:5.1f}%] {message[:100]:<100}")
    sys.stderr.flush()


def _progress_lines(fraction: float, message: str) -> None:
    """Ray's progress: one line per event (several workers report at once)."""
    sys.stderr.write(f"[{fraction * 100:5.1f}%] {message}\n")
    sys.stderr.flush()


def _check(args: argparse.Namespace) -> None:
    """Argument checks that need no zoo (so a typo costs nothing)."""
    if args.keeps and any(not 0 <= k <= 100 for k in args.keeps):
        raise PeruError("Every --keeps value must be a percent in [0, 100].")
    if args.specs and (args.methods or args.keeps or args.ranks):
        raise PeruError("--specs lists the settings itself; leave out --methods, --keeps and --ranks.")
    if args.ray is None and (args.workers is not None or args.max_retries != 2):
        raise PeruError("--workers and --max-retries apply to Ray sweeps; add --ray or leave them out.")
    if args.workers is not None and args.workers < 1:
        raise PeruError("--workers must be at least 1.")
    if args.max_retries < 0:
        raise PeruError("--max-retries must be 0 or more.")
    if args.ray is not None and getattr(args, "precision", "float32") != "float32":
        raise PeruError("--precision bf16 applies to sweeps on this machine; leave it out with --ray.")
    if args.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise PeruError("--ray needs the ray package; install it with pip install -r requirements.txt.") from None


def run(args: argparse.Namespace) -> int:
    from peru_core import experiments
    from peru_core.io import atomic_file
    from peru_core.specfile import read_spec_file
    from peru_core.store import ResultsStore
    from peru_core.table import format_table, paper_csv, paper_table
    from peru_core.zoo import demo_zoo, load_zoo
    from peru_core.zoo.runtime import ZooRuntime

    out = Path(args.out)
    if not out.parent.exists():
        raise PeruError(f"Folder {out.parent} does not exist; create it or pick another --out path.")
    _check(args)  # before the zoo is read
    t0 = time.perf_counter()
    zoo = demo_zoo() if args.zoo == "demo" else load_zoo(args.zoo)
    # with --ray the driver only reads costs and the store: the workers pick their own device
    runtime = ZooRuntime(zoo, device="cpu" if args.ray is not None else args.device,
                         precision=getattr(args, "precision", "float32"))
    if args.specs:
        specs = read_spec_file(args.specs)
    else:
        kwargs = {k: v for k, v in (("keeps", args.keeps), ("ranks", args.ranks)) if v is not None}
        specs = experiments.paper_specs(runtime, merges=args.methods, **kwargs)
    store = None if args.no_store else ResultsStore()
    if args.ray is None:
        rows = experiments.run_specs(runtime, specs, store, on_progress=_progress)
        sys.stderr.write("\n")
        where = runtime.device if runtime.precision == "float32" else f"{runtime.device} ({runtime.precision})"
    else:
        from peru_core.raysweep import run_specs_ray

        rows = run_specs_ray(runtime, specs, store, address=args.ray or None, workers=args.workers,
                             max_retries=args.max_retries, device=args.device, on_progress=_progress_lines)
        where = f"Ray ({args.ray or 'local'})"
    labels = {t.name: t.label for t in zoo.tasks}
    table = paper_table(rows, labels)
    with atomic_file(out) as tmp:
        Path(tmp).write_text(paper_csv(table))  # accuracy in %, exactly 2 decimals (peru_core.table's rule)
    print(format_table(table))
    cached = int(rows["cached"].sum()) if len(rows) else 0
    print(f"\n{len(specs)} settings x {len(zoo.tasks)} tasks on {where}; {cached} of {len(rows)} rows "
          f"from the results store; {time.perf_counter() - t0:.1f} s; wrote {out}")
    return 0
