"""``python -m peru_core lora``: PERU-LoRA task models from a base and T PEFT LoRA adapters.

    python -m peru_core lora --base B --adapters A1 A2 ... --rank 16 --out DIR [--adapter-prefix visual.]

Writes ``DIR/<adapter folder name>.safetensors`` per task (the base with each LoRA product replaced by its rank-q
truncation added), what a user stores instead of it beside the base: ``DIR/parts/<name>.safetensors`` (the rank-q
factors U, S, Vh per matrix, ``docs/task_part_format.md``), and ``DIR/report.json`` (the paper's parameter counts,
bytes equal to the sizes of the base file and of each part, and the rank each matrix kept: q is clamped per matrix
to the matrix's own rank when adapters mix ranks). PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from peru_core.accounting import reuse_accounting
from peru_core.commands.merge import one_line_errors
from peru_core.errors import PeruError
from peru_core.io import atomic_dir, load_lora_adapter, load_state_dict, save_state_dict, validate_adapter, \
    validate_task_names
from peru_core.lowrank import truncate_adapter
from peru_core.reuse import LoraReuse
from peru_core.statedict import numel
from peru_core.taskpart import lowrank_part, lowrank_part_bytes


def add_parser(subparsers) -> None:
    p = one_line_errors(subparsers.add_parser("lora", help="PERU-LoRA: rank-q truncation of LoRA products",
                                              description=__doc__.splitlines()[0]))
    p.add_argument("--base", required=True, help="pre-trained checkpoint (.safetensors)")
    p.add_argument("--adapters", nargs="*", default=[], metavar="DIR", help="PEFT adapter folders")
    p.add_argument("--rank", required=True, help="rank q kept per LoRA matrix (a whole number from 1 to the "
                                                 "largest adapter rank)")
    p.add_argument("--adapter-prefix", default="", help='prepended to adapter module names to find base keys, '
                                                        'for adapters trained on a sub-model (e.g. "visual.")')
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _rank(text: str) -> int:
    try:
        q = int(text)
    except ValueError:
        raise PeruError(f"--rank {text!r} is not a whole number; give a rank q of 1 or more.") from None
    if q < 1:
        raise PeruError(f"--rank {q} keeps nothing; give a rank q of 1 or more.")
    return q


def run(args: argparse.Namespace) -> int:
    rank = _rank(args.rank)
    names = [Path(a).name for a in args.adapters]
    validate_task_names(names)
    base = load_state_dict(args.base)
    adapters = []
    for folder, name in zip(args.adapters, names):
        adapter = load_lora_adapter(folder, name=name, prefix=args.adapter_prefix, base_keys=base.keys())
        validate_adapter(base, adapter)
        adapters.append(adapter)
    top = max((f.rank for a in adapters for f in a.values()), default=0)
    if rank > top:
        raise PeruError(f"--rank {rank} is above the largest adapter rank ({top}); give a rank q from 1 to {top}.")
    dtypes = {k: t.dtype for k, t in base.items()}
    rows, params, part_bytes = [], [], []
    with atomic_dir(args.out) as tmp:
        for name, folder, adapter in zip(names, args.adapters, adapters):
            reuse = LoraReuse(base, adapter)
            save_state_dict(reuse.model(rank), tmp / f"{name}.safetensors", metadata={"rank": str(rank)})
            kept = reuse.kept_ranks(rank)
            tensors, meta = lowrank_part(truncate_adapter(reuse.svds, rank), dtypes, rank)
            save_state_dict(tensors, tmp / "parts" / f"{name}.safetensors", metadata=meta)
            shapes = {k: (*s.shape, kept[k]) for k, s in reuse.svds.items()}
            params.append(sum(q * (o + i + 1) for o, i, q in shapes.values()))
            part_bytes.append(lowrank_part_bytes(shapes, dtypes, rank))
            rows.append({"task": name, "input": str(folder), "output": f"{name}.safetensors",
                         "part": f"parts/{name}.safetensors",
                         "lora_rank": {k: f.rank for k, f in adapter.items()}, "kept_rank": kept,
                         "lora_params": sum(f.rank * (f.shape[0] + f.shape[1]) for f in adapter.values())})
        # the shared model is the --base file itself, served unchanged
        acc = reuse_accounting("peru-lora", numel(base), os.path.getsize(args.base), params, part_bytes)
        for row, p, b in zip(rows, acc.task_params, acc.task_bytes):
            row.update(task_params=p, task_bytes=b)
        report = {"mode": "peru-lora", "rank": rank, "adapter_prefix": args.adapter_prefix,
                  "shared": str(args.base), "tasks": rows, "accounting": acc.to_dict()}
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {len(rows)} task models, their parts and report.json to {Path(args.out)}")
    return 0
