"""``python -m peru_core lora``: PERU-LoRA task models from a base and T PEFT LoRA adapters.

    python -m peru_core lora --base B --adapters A1 A2 ... --rank 16 --out DIR [--adapter-prefix visual.]

Writes ``DIR/<adapter folder name>.safetensors`` per task (the base with each LoRA product replaced by its rank-q
truncation added) and ``DIR/report.json``. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from peru_core.accounting import dtype_bytes, lowrank_accounting
from peru_core.commands.merge import one_line_errors
from peru_core.errors import PeruError
from peru_core.io import atomic_dir, load_lora_adapter, load_state_dict, save_state_dict, validate_adapter, \
    validate_task_names
from peru_core.reuse import LoraReuse
from peru_core.statedict import nbytes, numel


def add_parser(subparsers) -> None:
    p = one_line_errors(subparsers.add_parser("lora", help="PERU-LoRA: rank-q truncation of LoRA products",
                                              description=__doc__.splitlines()[0]))
    p.add_argument("--base", required=True, help="pre-trained checkpoint (.safetensors)")
    p.add_argument("--adapters", nargs="*", default=[], metavar="DIR", help="PEFT adapter folders")
    p.add_argument("--rank", required=True, help="rank q kept per LoRA matrix (a whole number >= 0)")
    p.add_argument("--adapter-prefix", default="", help='prepended to adapter module names to find base keys, '
                                                        'for adapters trained on a sub-model (e.g. "visual.")')
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _rank(text: str) -> int:
    try:
        q = int(text)
    except ValueError:
        raise PeruError(f"--rank {text!r} is not a whole number; give a rank q >= 0.") from None
    if q < 0:
        raise PeruError(f"--rank {q} is negative; give a rank q >= 0.")
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
    rows, shapes, value_bytes = [], [], 4
    with atomic_dir(args.out) as tmp:
        for name, folder, adapter in zip(names, args.adapters, adapters):
            reuse = LoraReuse(base, adapter)
            save_state_dict(reuse.model(rank), tmp / f"{name}.safetensors", metadata={"rank": str(rank)})
            shapes.append([(*lr.shape, lr.rank) for lr in reuse.svds.values()])
            value_bytes = dtype_bytes(next(iter(base[k].dtype for k in adapter)))
            rows.append({"task": name, "input": str(folder), "output": f"{name}.safetensors",
                         "lora_rank": {k: f.rank for k, f in adapter.items()},
                         "lora_params": sum(f.rank * (f.shape[0] + f.shape[1]) for f in adapter.values())})
        acc = lowrank_accounting("peru-lora", numel(base), nbytes(base), shapes, rank, value_bytes)
        for row, p, b in zip(rows, acc.task_params, acc.task_bytes):
            row.update(task_params=p, task_bytes=b)
        report = {"mode": "peru-lora", "rank": rank, "adapter_prefix": args.adapter_prefix, "tasks": rows,
                  "accounting": acc.to_dict()}
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {len(rows)} task models and report.json to {Path(args.out)}")
    return 0
