"""``python -m peru_core convert IN.pt OUT.safetensors``: pickled checkpoint -> safetensors, once, without running it.

Paper: PERU, https://arxiv.org/abs/2310.01886 (its task-vector checkpoints are pickles).
"""
from __future__ import annotations

import argparse
import sys

from peru_core.convert import RISK, convert_checkpoint


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a pickled (torch.save) checkpoint to safetensors without running it",
        description=RISK)
    p.add_argument("src", metavar="IN.pt", help="pickled checkpoint: a saved state dict or a whole model")
    p.add_argument("dst", metavar="OUT.safetensors", help="where to write the tensors (open_clip names)")
    p.add_argument("--only", metavar="PREFIX", default=None,
                   help="keep only keys under PREFIX, e.g. visual. for an image encoder's fine-tuned part")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    done = convert_checkpoint(args.src, args.dst, only=args.only)
    if done.pickled:
        print(RISK, file=sys.stderr)
    print(done.explain().removeprefix(RISK).strip())
    return 0
