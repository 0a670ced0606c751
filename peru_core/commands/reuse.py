"""``python -m peru_core reuse``: Post-Pruning or PERU-FFT task models from a base and T fine-tuned checkpoints.

    python -m peru_core reuse --base B --finetuned T1 T2 ... --mode peru-fft --merge task_arithmetic \
        --param lam=0.3 --keep 10 [--scope global|per-tensor] [--prefix visual.] --out DIR

Writes ``DIR/<stem>.safetensors`` per task (the reconstructed task model, same keys as its input), what a user
stores instead: ``DIR/parts/shared_model.safetensors`` (theta_0 or theta_star over the fine-tuned keys) and
``DIR/parts/<stem>.safetensors`` (each task's sparse part, ``docs/task_part_format.md``), and ``DIR/report.json``
(the paper's parameter counts, and bytes equal to the sizes of the files in ``parts/``).
PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from peru_core.accounting import reuse_accounting, safetensors_bytes, state_dict_entries
from peru_core.commands.merge import add_common, load_inputs, parse_params
from peru_core.device import resolve_device
from peru_core.errors import PeruError
from peru_core.io import atomic_dir, save_state_dict
from peru_core.merging import get_method
from peru_core.reuse import MODES, SparseReuse, shared_model
from peru_core.sparse import SCOPES, check_keep, part_dtype
from peru_core.statedict import numel
from peru_core.taskpart import sparse_part, sparse_part_bytes


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


SHARED_FILE = "shared_model.safetensors"


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
    if any(f"{n}.safetensors" == SHARED_FILE for n in names):
        raise PeruError(f"A fine-tune named {SHARED_FILE} would overwrite the shared model's file; rename it.")
    shared = shared_model(base, finetuned, args.mode, merge=args.merge, params=params, device=device)
    meta = {"mode": args.mode, **({"merge": args.merge} if args.mode == "peru-fft" else {})}
    rows, nnz, part_bytes = [], [], []
    with out as tmp:
        save_state_dict(shared, tmp / "parts" / SHARED_FILE, metadata=meta)
        shared_bytes = safetensors_bytes(state_dict_entries(shared), meta)
        for name, path, ft in zip(names, args.finetuned, finetuned):
            reuse = SparseReuse(shared, ft, args.scope, device=device)
            part = reuse.task_part(keep)
            save_state_dict(part.apply(shared), tmp / f"{name}.safetensors",
                            metadata={"mode": args.mode, "keep": repr(keep), "scope": args.scope})
            dtype = part_dtype(part.layout.dtypes)
            tensors, part_meta = sparse_part(part, dtype, meta)
            save_state_dict(tensors, tmp / "parts" / f"{name}.safetensors", metadata=part_meta)
            nnz.append(part.nnz)
            part_bytes.append(sparse_part_bytes(part.layout, part.nnz, keep, args.scope, dtype, meta))
            rows.append({"task": name, "input": str(path), "output": f"{name}.safetensors",
                         "part": f"parts/{name}.safetensors", "kept": part.nnz})
            del reuse, part
        d = numel(finetuned[0])
        acc = reuse_accounting(args.mode, numel(shared), shared_bytes, nnz, part_bytes)
        for row, p, b in zip(rows, acc.task_params, acc.task_bytes):
            row.update(task_params=p, task_bytes=b)
        report = {"mode": args.mode, "merge": args.merge if args.mode == "peru-fft" else None, "params": params,
                  "keep": keep, "scope": args.scope, "prefix": args.prefix, "d": d,
                  "shared": f"parts/{SHARED_FILE}", "tasks": rows, "accounting": acc.to_dict()}
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {len(rows)} task models, their parts and report.json to {Path(args.out)}")
    return 0
