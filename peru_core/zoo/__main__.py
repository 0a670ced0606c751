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
    b.add_argument("--pretrain-steps", type=int, default=None)
    b.add_argument("--finetune-steps", type=int, default=None)
    r = sub.add_parser("report", help="print pre-trained / fine-tuned / LoRA / Task Arithmetic accuracy of a zoo")
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
            if args.pretrain_steps:
                cfg = replace(cfg, pretrain=replace(cfg.pretrain, steps=args.pretrain_steps))
            if args.finetune_steps:
                cfg = replace(cfg, finetune=replace(cfg.finetune, steps=args.finetune_steps))
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
