"""``python -m peru_core merge``: one merged model from a base and T fine-tuned checkpoints.

    python -m peru_core merge --base B.safetensors --finetuned T1.safetensors T2.safetensors \
        --method ties --param k=20 --param lam=1.0 --out merged.safetensors [--prefix visual.]

A choice parameter takes one of its names, e.g. FusionBench's TIES: ``--param lam=0.3 --param trim_count=int+1
--param zero_sign=majority --param aggregate=sum``; a tool's name (``peru``, ``fusionbench``, ``ties-paper``,
``mergekit``) is an alias of its choice, so ``--param zero_sign=fusionbench`` works too.

The output holds the same keys as the fine-tuned inputs (the whole model with the default ``--prefix ""``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from peru_core.device import resolve_device
from peru_core.errors import PeruError
from peru_core.io import load_state_dict, save_state_dict, validate_base, validate_finetuned, validate_task_names
from peru_core.merging import get_method, list_methods
from peru_core.types import StateDict


def parse_params(items: Sequence[str] | None) -> dict[str, str]:
    """``["k=20", "lam=1"]`` -> ``{"k": "20", "lam": "1"}`` (values are range-checked by the method's Params)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PeruError(f"--param {item!r} is not key=value; write it like --param lam=0.3.")
        if key.strip() in out:
            raise PeruError(f"--param {key.strip()} is given twice; give each parameter once.")
        out[key.strip()] = value.strip()
    return out


def load_inputs(base_path: str, finetuned_paths: Sequence[str], prefix: str) -> tuple[StateDict, list[StateDict],
                                                                                        list[str]]:
    """Read and validate the base and the fine-tuned checkpoints; task names are the file stems."""
    names = [Path(p).stem for p in finetuned_paths]
    validate_task_names(names)
    base = load_state_dict(base_path)
    validate_base(base, prefix=prefix, name=f"base {base_path}")
    finetuned = []
    for p in finetuned_paths:
        sd = load_state_dict(p)
        validate_finetuned(base, sd, prefix=prefix, name=f"fine-tuned {p}")
        finetuned.append(sd)
    return base, finetuned, names


def one_line_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Usage errors print one line (``error: ...``) on stderr and exit 2, like every other CLI error."""

    def error(message: str):
        p.exit(2, f"error: {message} (see python -m peru_core {p.prog.split()[-1]} --help)\n")

    p.error = error  # type: ignore[method-assign]
    return p


def add_common(p: argparse.ArgumentParser) -> None:
    one_line_errors(p)
    p.add_argument("--base", required=True, help="pre-trained checkpoint (.safetensors)")
    p.add_argument("--finetuned", nargs="*", default=[], metavar="T", help="fine-tuned checkpoints (.safetensors)")
    p.add_argument("--prefix", default="", help='key prefix of the tuned part the fine-tuned files hold ("" = whole '
                                                 'model, e.g. "visual." for an image encoder)')
    p.add_argument("--device", default=None, help="cuda or cpu for the compute-bound steps (default: cuda when "
                                                  "available)")


def add_parser(subparsers) -> None:
    names = ", ".join(m.name for m in list_methods())
    p = subparsers.add_parser("merge", help="merge fine-tuned checkpoints into one model",
                              description=__doc__.splitlines()[0])
    add_common(p)
    p.add_argument("--method", required=True, help=f"merge method: {names}")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, e.g. lam=0.3 or a choice such as zero_sign=majority (repeat)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    params = method.check_params(parse_params(args.param))  # before reading gigabytes
    if method.needs:
        data = "validation images" if method.needs_validation else "the unlabelled test images it trains on"
        raise PeruError(f"{method.label} needs a model and {data}; run it on a zoo from the dashboard or the sweep "
                        "command.")
    if Path(args.out).suffix != ".safetensors":
        raise PeruError(f"--out {args.out} should end in .safetensors; merged models are written as safetensors.")
    device = resolve_device(args.device)  # a bad --device fails before gigabytes are read too
    base, finetuned, names = load_inputs(args.base, args.finetuned, args.prefix)
    merged = method(base, finetuned, device=device, **params)
    save_state_dict(merged, args.out, metadata={"method": method.name, "params": repr(params),
                                                "tasks": ",".join(names), "prefix": args.prefix})
    print(f"merged {len(finetuned)} models with {method.label} into {args.out}")
    return 0
