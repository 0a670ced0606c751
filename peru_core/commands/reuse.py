"""``python -m peru_core reuse``: Post-Pruning, PERU-FFT, TALL-mask or EMR task models from a base and T fine-tunes.

    python -m peru_core reuse --base B --finetuned T1 T2 ... --mode peru-fft --merge task_arithmetic \
        --param lam=0.3 --keep 10 [--scope global|per-tensor] [--prefix visual.] --out DIR
    python -m peru_core reuse --base B --finetuned T1 T2 ... --mode tall [--param lam=1 --param tall_mask_lambda=0.6]
    python -m peru_core reuse --base B --finetuned T1 T2 ... --mode emr --out DIR

Writes ``DIR/<stem>.safetensors`` per task (the reconstructed task model, same keys as its input), what a user
stores instead: ``DIR/parts/shared_model.safetensors`` (theta_0 or theta_star over the fine-tuned keys) and
``DIR/parts/<stem>.safetensors`` (each task's sparse part, ``docs/task_part_format.md``), and ``DIR/report.json``
(the paper's parameter counts, and bytes equal to the sizes of the files in ``parts/``).
TALL masks (https://arxiv.org/abs/2405.07813) and EMR-Merging (https://arxiv.org/abs/2405.17461) share theta_0
(``parts/shared_model.safetensors``) and a task vector (``parts/shared_vector.safetensors``) and keep a bitmask (+ a
rescaler for EMR) per task (``peru-mask-v1``; :mod:`peru_core.partreuse`); they take no ``--keep``.
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
from peru_core.partreuse import PART_METHODS, get_part_method
from peru_core.reuse import MODES, SparseReuse, shared_model
from peru_core.sparse import SCOPES, check_keep, part_dtype
from peru_core.statedict import numel
from peru_core.taskpart import (mask_part, mask_part_bytes, sparse_part, sparse_part_bytes, vector_file,
                                 vector_file_bytes)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("reuse", help="Post-Pruning / PERU-FFT: shared model + top-m%% per task; TALL / "
                              "EMR: shared model and task vector + a bitmask per task",
                              description=__doc__.splitlines()[0])
    add_common(p)
    p.add_argument("--mode", required=True, choices=(*MODES, *PART_METHODS))
    p.add_argument("--merge", default="task_arithmetic", help="merge giving theta_star (peru-fft only)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="merge parameter, e.g. lam=0.3, or a tall parameter (lam, tall_mask_lambda); repeat")
    p.add_argument("--keep", help="percent m of each task vector kept, in [0, 100] (post-pruning, peru-fft)")
    p.add_argument("--scope", default="global", choices=SCOPES, help="top-m%% over the whole vector or per tensor")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


SHARED_FILE = "shared_model.safetensors"
VECTOR_FILE = "shared_vector.safetensors"


def run(args: argparse.Namespace) -> int:
    if args.mode in PART_METHODS:
        return run_masked(args)
    if args.keep is None:
        raise PeruError(f"--mode {args.mode} needs --keep, the percent m of each task vector kept.")
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


def run_masked(args: argparse.Namespace) -> int:
    """TALL masks / EMR-Merging: ``parts/`` holds theta_0, the shared task vector and one mask part per task."""
    if args.keep is not None or args.scope != "global":
        raise PeruError(f"--mode {args.mode} keeps a bitmask per task; drop --keep and --scope.")
    method = get_part_method(args.mode)
    params = method.check_params(parse_params(args.param))
    out = atomic_dir(args.out)
    base, finetuned, names = load_inputs(args.base, args.finetuned, args.prefix)
    if any(f"{n}.safetensors" in (SHARED_FILE, VECTOR_FILE) for n in names):
        raise PeruError(f"A fine-tune named {SHARED_FILE} or {VECTOR_FILE} would overwrite a shared file; rename it.")
    shared = {k: base[k] for k in finetuned[0]}
    parts = method(shared, finetuned, **params)
    layout, meta = parts.layout, {"mode": args.mode}
    dts = dict(zip(layout.keys, layout.dtypes))
    rows, part_bytes = [], []
    with out as tmp:
        save_state_dict(shared, tmp / "parts" / SHARED_FILE, metadata=meta)
        tensors, vmeta = vector_file(parts, dts, args.mode, meta)
        save_state_dict(tensors, tmp / "parts" / VECTOR_FILE, metadata=vmeta)
        shared_bytes = safetensors_bytes(state_dict_entries(shared), meta) + vector_file_bytes(layout, dts,
                                                                                               args.mode, meta)
        for t, (name, path) in enumerate(zip(names, args.finetuned)):
            save_state_dict(parts.model(shared, t), tmp / f"{name}.safetensors", metadata=meta)
            tensors, part_meta = mask_part(parts, t, layout, args.mode, method.rescaled, meta)
            save_state_dict(tensors, tmp / "parts" / f"{name}.safetensors", metadata=part_meta)
            part_bytes.append(mask_part_bytes(layout, args.mode, method.rescaled, meta))
            rows.append({"task": name, "input": str(path), "output": f"{name}.safetensors",
                         "part": f"parts/{name}.safetensors", "kept": parts.kept(t),
                         **({"rescaler": parts.rescalers[t]} if method.rescaled else {})})
        d = layout.size
        acc = reuse_accounting(args.mode, 2 * d, shared_bytes, [method.task_params(d)] * len(names), part_bytes)
        for row, p, b in zip(rows, acc.task_params, acc.task_bytes):
            row.update(task_params=p, task_bytes=b)
        report = {"mode": args.mode, "params": params, "prefix": args.prefix, "d": d,
                  "shared": f"parts/{SHARED_FILE}", "shared_vector": f"parts/{VECTOR_FILE}", "tasks": rows,
                  "accounting": acc.to_dict()}
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {len(rows)} task models, their parts and report.json to {Path(args.out)}")
    return 0
