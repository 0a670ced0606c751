"""``python -m peru_core.zoo build [--out DIR] [--quick]`` rebuilds the demo zoo; ``report [DIR]`` re-evaluates one.

See docs/zoo.md for the data, the recipe and the timings (PERU: https://arxiv.org/abs/2310.01886).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from peru_core.errors import PeruError
from peru_core.zoo.manifest import DEMO_ZOO, load_zoo


def _progress(fraction: float, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {100 * fraction:5.1f}% {message}", file=sys.stderr, flush=True)


def _override(cfg, item: str):
    """``a.b=v`` -> a copy of ``cfg`` with field ``a.b`` set to ``v`` (cast to the field's current type)."""
    path, _, value = item.partition("=")
    head, _, rest = path.partition(".")
    if not hasattr(cfg, head) or not value:
        raise PeruError(f"--set {item!r} names no recipe field; use e.g. finetune.lr=0.01.")
    if rest:
        return replace(cfg, **{head: _override(getattr(cfg, head), f"{rest}={value}")})
    return replace(cfg, **{head: type(getattr(cfg, head))(value)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peru_core.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="rebuild the demo zoo (offline; needs requirements-zoo.txt)")
    b.add_argument("--out", type=Path, default=DEMO_ZOO, help=f"output folder (default {DEMO_ZOO})")
    b.add_argument("--quick", action="store_true", help="a few-minute build with fewer steps, for iterating")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2; bitwise "
                   "reproducibility needs the same count)")
    b.add_argument("--device", default=None, help="cpu (default; the shipped zoo) or cuda, for iterating")
    b.add_argument("--data-cache", type=Path, default=None, help="an .npz of all task images: written when "
                   "missing, read when present (for machines without the data packages)")
    b.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. finetune.lr=0.01 or pretrain.steps=600 (for experiments)")
    r = sub.add_parser("report", help="print pre-trained / fine-tuned / LoRA / L-LoRA / Task Arithmetic accuracy "
                       "of a zoo, and every merge per kind")
    r.add_argument("zoo", nargs="?", type=Path, default=DEMO_ZOO)
    r.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            from peru_core.zoo.build import BuildConfig, build
            from peru_core.zoo.report import format_metrics

            cfg = BuildConfig.quick() if args.quick else BuildConfig()
            if args.threads:
                cfg = replace(cfg, threads=args.threads)
            if args.device:
                cfg = replace(cfg, device=args.device)
            for item in args.set:
                cfg = _override(cfg, item)
            out = build(args.out, cfg, _progress, args.data_cache)
            build_info = load_zoo(out).extra["build"]
            print(format_metrics(build_info["metrics"]))
            print("timings (s):", build_info["timings"])
        else:
            from peru_core.zoo.report import evaluate_zoo, format_metrics

            print(format_metrics(evaluate_zoo(load_zoo(args.zoo), args.device)))
    except PeruError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
