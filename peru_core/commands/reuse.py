"""``python -m peru_core reuse``: Post-Pruning or PERU-FFT task models from a base and T fine-tuned checkpoints.

    python -m peru_core reuse --base B --finetuned T1 T2 ... --mode peru-fft --merge task_arithmetic \
        --param lam=0.3 --keep 10 [--scope global|per-tensor] [--prefix visual.] --out DIR

Writes ``DIR/<stem>.safetensors`` per task (the reconstructed task model, same keys as its input) and
``DIR/report.json`` (the paper's parameter counts and honest bytes). PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from peru_core.accounting import dtype_bytes, sparse_accounting
from peru_core.commands.merge import add_common, load_inputs, parse_params
from peru_core.device import resolve_device
from peru_core.errors import PeruError
from peru_core.io import atomic_dir, save_state_dict
from peru_core.merging import get_method
from peru_core.reuse import MODES, SparseReuse, shared_model
from peru_core.sparse import SCOPES, check_keep
from peru_core.statedict import nbytes, numel


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("reuse", help="Post-Pruning / PERU-FFT: shared model + top-m%% per task",
                              description=__doc__.splitlines()[0])
    add_common(p)
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--merge", default="task_arithmetic", help="merge giving theta_star (peru-fft only)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="merge parameter, e.g. lam=0.3 (repeat)")
    p.add_argument("--keep", required=True, help="percent m of each task vector kept, in [0, 100]")
    p.add_argument("--scope", default="global", choices=SCOPES, help="top-m%% over the whole vector or per tensor")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    keep = check_keep(args.keep)
    raw = parse_params(args.param)
    params = {}
    if args.mode == "peru-fft":
        method = get_method(args.merge)
        if method.needs:
            raise PeruError(f"{method.label} needs a model and validation data; pick another --merge for the CLI.")
        params = method.check_params(raw)
    elif raw:
        raise PeruError("--param applies to the merge of peru-fft; drop it for post-pruning.")
    device = resolve_device(args.device)  # before reading gigabytes
    out = atomic_dir(args.out)  # checks --out, also before reading
    base, finetuned, names = load_inputs(args.base, args.finetuned, args.prefix)
    shared = shared_model(base, finetuned, args.mode, merge=args.merge, params=params, device=device)
    rows, nnz = [], []
    with out as tmp:
        for name, path, ft in zip(names, args.finetuned, finetuned):
            reuse = SparseReuse(shared, ft, args.scope, device=device)
            part = reuse.task_part(keep)
            save_state_dict(part.apply(shared), tmp / f"{name}.safetensors",
                            metadata={"mode": args.mode, "keep": repr(keep), "scope": args.scope})
            nnz.append(part.nnz)
            rows.append({"task": name, "input": str(path), "output": f"{name}.safetensors", "kept": part.nnz})
            del reuse, part
        d = numel(finetuned[0])
        value_bytes = dtype_bytes(next(iter(finetuned[0].values())).dtype)
        acc = sparse_accounting(args.mode, numel(base), nbytes(base), d, nnz, value_bytes)
        for row, p, b in zip(rows, acc.task_params, acc.task_bytes):
            row.update(task_params=p, task_bytes=b)
        report = {"mode": args.mode, "merge": args.merge if args.mode == "peru-fft" else None, "params": params,
                  "keep": keep, "scope": args.scope, "prefix": args.prefix, "d": d, "tasks": rows,
                  "accounting": acc.to_dict()}
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {len(rows)} task models and report.json to {Path(args.out)}")
    return 0
